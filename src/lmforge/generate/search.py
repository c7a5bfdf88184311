"""Search strategies over a :class:`~lmforge.generate.session.DecodingSession`: greedy, sampling, beam.

They follow transformers' ``GenerationMixin`` step by step (the same operations in the same order),
so that the same weights give the same tokens and beam scores. Rows are prompts (or prompts times
``num_return_sequences`` / ``num_beams``, prompt-major); ``P`` is the length of the session's
prefix (the padded prompt) and ``M`` the number of new tokens allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from lmforge.generate.processors import GenerationConfig, LogitsProcessor, apply_processors, build_processors
from lmforge.generate.session import DecodingSession
from lmforge.generate.stopping import StopStrings

NEG = -1.0e9  # transformers' "impossible" score in beam search


@dataclass
class SearchOutput:
    """What a strategy produced for N = prompts x num_return_sequences rows (prompt-major).

    ``sequences`` (N, L) holds the generated tokens only, padded after each row's end; ``lengths``
    (N,) counts each row's tokens (a final EOS included). ``scores`` (N,): for beam searches the
    sequence score (sum of processed log-probabilities divided by length ** length_penalty, as in
    transformers); otherwise the sum of the model's log-probabilities of the generated tokens.
    """

    sequences: torch.Tensor
    lengths: torch.Tensor
    scores: torch.Tensor


class StoppingCriteria:
    """Which rows are finished after their newest token: length, EOS ids, stop strings."""

    def __init__(self, prefix_len: int, max_new_tokens: int, eos_token_ids: Sequence[int] = (),
                 stop_strings: str | Sequence[str] | None = None,
                 decode: Callable[[list[int]], str] | None = None):
        self.prefix_len = prefix_len
        self.max_new_tokens = max_new_tokens
        self.eos = torch.tensor(list(eos_token_ids), dtype=torch.long) if eos_token_ids else None
        self.stop_strings = StopStrings(stop_strings, decode) if stop_strings else None

    @property
    def stops_early(self) -> bool:
        """Whether anything but the length limit can end a row."""
        return self.eos is not None or self.stop_strings is not None

    def __call__(self, sequences: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        new = sequences.shape[1] - self.prefix_len
        done = torch.full((sequences.shape[0],), new >= self.max_new_tokens, dtype=torch.bool,
                          device=sequences.device)
        if self.eos is not None:
            done |= torch.isin(sequences[:, -1], self.eos.to(sequences.device))
        if self.stop_strings is not None and new > 0:
            done |= self.stop_strings(sequences, self.prefix_len, active)
        return done


def expand_rows(session: DecodingSession, logits: torch.Tensor, n: int) -> torch.Tensor:
    """Repeat every row n times (prompt-major), in the session and in `logits`."""
    if n == 1:
        return logits
    index = torch.arange(session.batch_size, device=logits.device).repeat_interleave(n)
    session.reorder(index)
    return logits.index_select(0, index)


def choose_tokens(processors: Sequence[LogitsProcessor], warpers: Sequence[LogitsProcessor], ids: torch.Tensor,
                  logits: torch.Tensor, do_sample: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """The next token of every row (N,): the argmax of the processed logits, or a sample from the processed
    and warped distribution. `ids` (N, length) are the sequences so far, `logits` (N, V) the model's."""
    scores = apply_processors(processors, ids, logits)
    if not do_sample:
        return scores.argmax(-1)
    probs = apply_processors(warpers, ids, scores).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def token_steps(session: DecodingSession, logits: torch.Tensor, config: GenerationConfig,
                stopping: StoppingCriteria, pad_token_id: int,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Greedy decoding or multinomial sampling, one step at a time.

    Yields ``(tokens, logprobs, active)`` per step, each (N,): the chosen tokens (``pad_token_id``
    for rows already finished), their log-probability under the model (unprocessed logits), and
    which rows were still generating. Stops when every row is finished.
    """
    P = session.prefix_ids.shape[1]
    processors, warpers = build_processors(config, P, session.prefix_mask)
    seqs = torch.full((session.batch_size, P + stopping.max_new_tokens), pad_token_id, dtype=torch.long,
                      device=logits.device)
    seqs[:, :P] = session.prefix_ids
    N = session.batch_size
    active = torch.ones(N, dtype=torch.bool, device=logits.device)
    n_active = N
    for t in range(stopping.max_new_tokens):
        tokens = choose_tokens(processors, warpers, seqs[:, :P + t], logits, config.do_sample, generator)
        if n_active < N:
            tokens = torch.where(active, tokens, pad_token_id)
        seqs[:, P + t] = tokens
        logprobs = logits.log_softmax(-1).gather(1, tokens[:, None]).squeeze(1)
        yield tokens, logprobs, active
        if t + 1 == stopping.max_new_tokens:
            return
        if stopping.stops_early:
            active = active & ~stopping(seqs[:, :P + t + 1], active)
            n_active = int(active.sum())
            if n_active == 0:
                return
        logits = session.step(tokens)


def greedy_or_sample(session: DecodingSession, logits: torch.Tensor, config: GenerationConfig,
                     stopping: StoppingCriteria, pad_token_id: int,
                     generator: torch.Generator | None = None) -> SearchOutput:
    logits = expand_rows(session, logits, config.num_return_sequences if config.do_sample else 1)
    steps = list(token_steps(session, logits, config, stopping, pad_token_id, generator))
    tokens, logprobs, active = (torch.stack(column, 1) for column in zip(*steps))
    return SearchOutput(tokens, active.sum(1), (logprobs * active).sum(1))


class BeamGroup:
    """The state of ``num_beams`` beams per prompt, advanced as transformers' vectorised beam search.

    At each step the best ``keep = max(2, 1 + #eos) * num_beams`` continuations over all beams are
    taken; those that hit a stopping criterion compete (among the top ``num_beams`` only) for the
    ``num_beams`` finished slots with a length-penalised score, the others become the running beams.
    """

    def __init__(self, prefix_ids: torch.Tensor, num_beams: int, max_new_tokens: int, fill: int, n_eos: int,
                 length_penalty: float, early_stopping: bool | str):
        B, P = prefix_ids.shape
        device = prefix_ids.device
        self.B, self.num_beams, self.P, self.max_length = B, num_beams, P, P + max_new_tokens
        self.length_penalty, self.early_stopping = length_penalty, early_stopping
        self.running = torch.full((B, num_beams, P + max_new_tokens), fill, dtype=torch.long, device=device)
        self.running[:, :, :P] = prefix_ids[:, None]
        self.finished = self.running.clone()
        self.running_scores = torch.zeros(B, num_beams, device=device)
        self.running_scores[:, 1:] = NEG  # only the first beam's tokens count at the first step
        self.finished_scores = torch.full((B, num_beams), NEG, device=device)
        self.finished_lengths = torch.zeros(B, num_beams, dtype=torch.long, device=device)
        self.is_finished = torch.zeros(B, num_beams, dtype=torch.bool, device=device)
        self.improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
        self.hits = torch.zeros(B, num_beams, dtype=torch.bool, device=device)
        self.keep = max(2, 1 + n_eos) * num_beams
        self.top_mask = torch.arange(self.keep, device=device) < num_beams

    def sequences(self, cur_len: int) -> torch.Tensor:
        """The running beams' tokens so far, (B * num_beams, cur_len), as the processors see them."""
        return self.running[:, :, :cur_len].reshape(self.B * self.num_beams, cur_len)

    def last_tokens(self, cur_len: int) -> torch.Tensor:
        return self.running[:, :, cur_len]

    def advance(self, log_probs: torch.Tensor, cur_len: int, stopping: StoppingCriteria,
                generator: torch.Generator | None = None, sample: bool = False) -> torch.Tensor:
        """Take processed log-probs (B * num_beams, V) of the running beams; return, per new running
        beam, the index (B, num_beams) of the beam it continues."""
        B, nb, V = self.B, self.num_beams, log_probs.shape[-1]
        accumulated = (log_probs.view(B, nb, V) + self.running_scores[:, :, None]).view(B, nb * V)
        if sample:
            index = torch.multinomial(accumulated.softmax(-1), self.keep, generator=generator)
            top_scores, order = accumulated.gather(1, index).sort(dim=-1, descending=True)
            index = index.gather(-1, order)
        else:
            top_scores, index = torch.topk(accumulated, self.keep)
        source = index // V
        top_seqs = _gather(self.running, source)
        top_seqs[:, :, cur_len] = index % V
        hits = stopping(top_seqs[:, :, :cur_len + 1].reshape(B * self.keep, -1)).view(B, self.keep)

        running_scores = top_scores + hits.float() * NEG
        best = torch.topk(running_scores, nb)[1]
        self.running = _gather(top_seqs, best)
        self.running_scores = _gather(running_scores, best)
        source = _gather(source, best)

        if bool(hits.any()):  # else no candidate can enter the finished hypotheses: they stay as they are
            self._update_finished(top_seqs, top_scores, hits, cur_len)
        self.hits = hits
        self._update_improvable(cur_len + 1)
        return source

    def _update_finished(self, top_seqs, top_scores, hits, cur_len) -> None:
        just_finished = hits & self.top_mask[None, :]
        generated = cur_len + 1 - self.P
        scores = top_scores / (generated ** self.length_penalty)
        full = torch.all(self.is_finished, dim=-1, keepdim=True) & (self.early_stopping is True)
        scores += full.float() * NEG
        scores += (~self.improvable).float() * NEG
        scores += (~just_finished) * NEG
        merged_scores = torch.cat((self.finished_scores, scores), dim=1)
        best = torch.topk(merged_scores, k=self.num_beams)[1]
        self.finished = _gather(torch.cat((self.finished, top_seqs), dim=1), best)
        self.finished_scores = _gather(merged_scores, best)
        new_lengths = torch.full_like(top_scores, generated, dtype=torch.long)
        self.finished_lengths = _gather(torch.cat((self.finished_lengths, new_lengths), dim=1), best)
        self.is_finished = _gather(torch.cat((self.is_finished, just_finished), dim=1), best)

    def _update_improvable(self, cur_len: int) -> None:
        """Can a running beam still beat the worst finished one? (transformers' early-stop heuristic)"""
        if self.early_stopping == "never" and self.length_penalty > 0.0:
            best_length = self.max_length - self.P
        else:
            best_length = cur_len - self.P
        best_running = self.running_scores[:, :1] / (best_length ** self.length_penalty)
        worst_finished = torch.where(self.is_finished, torch.min(self.finished_scores, dim=1, keepdim=True)[0], NEG)
        self.improvable = self.improvable & torch.any(best_running > worst_finished, dim=-1, keepdim=True)

    def unfinished(self) -> bool:
        improvement_possible = bool(self.improvable.any())
        open_beam = not (bool(self.is_finished.all()) and self.early_stopping is True)
        return improvement_possible and open_beam and not bool(self.hits.all())


def _gather(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Select beams along dim 1: tensor (B, K, ...), index (B, J) -> (B, J, ...)."""
    while index.dim() < tensor.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(tensor, index, dim=1)


def finalize_beams(groups: list[BeamGroup], num_return_sequences: int, fill: int) -> SearchOutput:
    """The best `num_return_sequences` finished hypotheses per prompt over all groups."""
    P = groups[0].P
    scores = torch.cat([g.finished_scores for g in groups], dim=1)
    seqs = torch.cat([g.finished for g in groups], dim=1)
    lengths = torch.cat([g.finished_lengths for g in groups], dim=1)
    if len(groups) > 1:
        order = torch.sort(scores, dim=1, descending=True, stable=True)[1]
        scores, seqs, lengths = _gather(scores, order), _gather(seqs, order), _gather(lengths, order)
    n = num_return_sequences
    lengths = lengths[:, :n].reshape(-1)
    width = max(int(lengths.max()), 1)
    sequences = seqs[:, :n, P:P + width].reshape(-1, width)
    sequences = sequences.masked_fill(torch.arange(width, device=sequences.device)[None] >= lengths[:, None], fill)
    return SearchOutput(sequences, lengths, scores[:, :n].reshape(-1))


def beam_search(session: DecodingSession, logits: torch.Tensor, config: GenerationConfig,
                stopping: StoppingCriteria, fill: int, generator: torch.Generator | None = None) -> SearchOutput:
    """Beam search (beam sampling with ``do_sample``), as transformers' ``_beam_search``."""
    nb = config.num_beams
    B = session.batch_size
    logits = expand_rows(session, logits, nb)
    P = session.prefix_ids.shape[1]
    processors, warpers = build_processors(config, P, session.prefix_mask)
    processors = processors + warpers
    beams = BeamGroup(session.prefix_ids[::nb], nb, stopping.max_new_tokens, fill, len(config.eos_token_ids),
                      config.length_penalty, config.early_stopping)
    offsets = torch.arange(B, device=logits.device)[:, None] * nb
    for t in range(stopping.max_new_tokens):
        cur_len = P + t
        log_probs = apply_processors(processors, beams.sequences(cur_len), logits.log_softmax(-1))
        source = beams.advance(log_probs, cur_len, stopping, generator, sample=config.do_sample)
        if not beams.unfinished():
            break
        session.reorder((source + offsets).view(-1))
        logits = session.step(beams.last_tokens(cur_len).reshape(-1))
    return finalize_beams([beams], config.num_return_sequences, fill)
