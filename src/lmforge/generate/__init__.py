"""Decoding: logits processors, stop strings, streaming detokenization and search strategies."""
