"""Regression: for an encoder-decoder, generate() counts max_length on the decoder side (the start token
included), as transformers does, whatever the source length; and it honours decoder_start_token_id."""

import torch

import lmforge
from hf_models import VOCAB, save_tiny_seq2seq
from lmforge.generate.api import generate


def test_max_length_and_decoder_start_match_transformers(tmp_path):
    hf = save_tiny_seq2seq("t5", tmp_path)
    ckpt = lmforge.load(tmp_path)
    source = torch.randint(3, VOCAB, (1, 15), generator=torch.Generator().manual_seed(0))
    for kwargs in ({"max_length": 6}, {"max_length": 6, "decoder_start_token_id": 5}):
        theirs = hf.generate(source, attention_mask=torch.ones_like(source), do_sample=False, num_beams=1,
                             eos_token_id=None, **kwargs)[0].tolist()
        ours = generate(ckpt, [source[0].tolist()], ignore_eos=True, **kwargs).completions[0][0].token_ids
        assert len(theirs) == 6 and theirs[0] == kwargs.get("decoder_start_token_id", 0)
        assert ours == theirs[1:]
