"""Diverse (group) beam search and contrastive search.

transformers 5 moved both out of its core, so these stand on their own tests of their defining
properties rather than on parity.

Diverse beam search (Vijayakumar et al., 2016): the ``num_beams`` beams of a prompt form
``num_beam_groups`` groups, each an ordinary beam search (:class:`BeamGroup`). Within a step the
groups choose in order; group g's log-probabilities of a token are lowered by
``diversity_penalty`` times the number of beams of groups 0..g-1 that chose that token at this
step (Hamming diversity). The final hypotheses are the best of all groups.

Contrastive search (Su et al., 2022): among the ``top_k`` most probable next tokens v, choose
``argmax (1 - alpha) * p(v) - alpha * max_j cos(h_v, h_j)`` where h_v is the last hidden state
of the sequence extended by v and h_j those of every previous (non-padding) token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmforge.generate.processors import GenerationConfig, apply_processors, build_processors
from lmforge.generate.search import BeamGroup, SearchOutput, StoppingCriteria, expand_rows, finalize_beams
from lmforge.generate.session import DecodingSession


def hamming_diversity(log_probs: torch.Tensor, chosen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Lower each row's log-probs (B, beams, V) by `penalty` times how often each token occurs in
    `chosen` (B, c), the tokens earlier groups chose at this step for the same prompt."""
    if chosen.shape[1] == 0:
        return log_probs
    counts = torch.zeros(log_probs.shape[0], log_probs.shape[-1], device=log_probs.device)
    counts.scatter_add_(1, chosen, torch.ones_like(chosen, dtype=counts.dtype))
    return log_probs - penalty * counts[:, None, :]


def group_beam_search(session: DecodingSession, logits: torch.Tensor, config: GenerationConfig,
                      stopping: StoppingCriteria, fill: int) -> SearchOutput:
    nb, G = config.num_beams, config.num_beam_groups
    sub = nb // G
    B = session.batch_size
    logits = expand_rows(session, logits, nb)
    P = session.prefix_ids.shape[1]
    processors, _ = build_processors(config, P, session.prefix_mask[::nb].repeat_interleave(sub, dim=0))
    prefix = session.prefix_ids[::nb]
    groups = [BeamGroup(prefix, sub, stopping.max_new_tokens, fill, len(config.eos_token_ids),
                        config.length_penalty, config.early_stopping) for _ in range(G)]
    # session rows are prompt-major, then group, then beam: row = b * nb + g * sub + j
    offsets = torch.arange(B, device=logits.device)[:, None] * nb
    for t in range(stopping.max_new_tokens):
        cur_len = P + t
        log_probs = logits.log_softmax(-1).view(B, G, sub, -1)
        sources, chosen = [], torch.empty(B, 0, dtype=torch.long, device=logits.device)
        for g, group in enumerate(groups):
            scores = hamming_diversity(log_probs[:, g], chosen, config.diversity_penalty)
            scores = apply_processors(processors, group.sequences(cur_len), scores.reshape(B * sub, -1))
            sources.append(group.advance(scores, cur_len, stopping) + g * sub)
            chosen = torch.cat([chosen, group.last_tokens(cur_len)], dim=1)
        if not any(group.unfinished() for group in groups):
            break
        session.reorder((torch.cat(sources, dim=1) + offsets).view(-1))
        logits = session.step(chosen.view(-1))
    return finalize_beams(groups, config.num_return_sequences, fill)


def degeneration_penalty(context: torch.Tensor, context_mask: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """max_j cos(candidate, context_j) over real context positions: context (N, T, H), mask (N, T),
    candidates (N, K, H) -> (N, K)."""
    cosine = F.normalize(candidates, dim=-1) @ F.normalize(context, dim=-1).transpose(1, 2)  # (N, K, T)
    cosine = cosine.masked_fill(~context_mask.bool()[:, None, :], -torch.inf)
    return cosine.amax(dim=-1)


def contrastive_scores(probs: torch.Tensor, penalty: torch.Tensor, alpha: float) -> torch.Tensor:
    """Model confidence against degeneration: (1 - alpha) * p(v) - alpha * penalty(v)."""
    return (1.0 - alpha) * probs - alpha * penalty


def contrastive_search(session: DecodingSession, logits: torch.Tensor, config: GenerationConfig,
                       stopping: StoppingCriteria, pad_token_id: int) -> SearchOutput:
    """Needs a session built with ``output_hidden=True``."""
    k, alpha = config.top_k, config.penalty_alpha
    N, P = session.prefix_ids.shape
    device = logits.device
    processors, _ = build_processors(config, P, session.prefix_mask)
    context = session.hidden  # (N, P, H)
    context_mask = session.prefix_mask.clone()
    seqs = torch.full((N, P + stopping.max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    seqs[:, :P] = session.prefix_ids
    active = torch.ones(N, dtype=torch.bool, device=device)
    total = torch.zeros(N, device=device)
    lengths = torch.zeros(N, dtype=torch.long, device=device)
    rows = torch.arange(N, device=device)
    for t in range(stopping.max_new_tokens):
        probs = apply_processors(processors, seqs[:, :P + t], logits).softmax(-1)
        top_probs, top_ids = torch.topk(probs, k, dim=-1)  # (N, K)
        # try every candidate: expand each row to K rows, feed the candidates, keep the winner's state
        session.reorder(rows.repeat_interleave(k))
        candidate_logits = session.step(top_ids.view(-1)).view(N, k, -1)
        candidate_hidden = session.hidden[:, -1].view(N, k, -1)
        penalty = degeneration_penalty(context, context_mask, candidate_hidden)
        choice = contrastive_scores(top_probs, penalty, alpha).argmax(-1)  # (N,)
        tokens = torch.where(active, top_ids[rows, choice], pad_token_id)
        seqs[:, P + t] = tokens
        total += torch.where(active, logits.log_softmax(-1)[rows, tokens], 0.0)
        lengths += active
        active = active & ~stopping(seqs[:, :P + t + 1], active)
        if not bool(active.any()):
            break
        session.reorder(rows * k + choice)
        logits = candidate_logits[rows, choice]
        context = torch.cat([context, candidate_hidden[rows, choice][:, None]], dim=1)
        context_mask = torch.cat([context_mask, torch.ones_like(context_mask[:, :1])], dim=1)
    width = int(lengths.max())
    return SearchOutput(seqs[:, P:P + width], lengths, total)
