"""Corpora and data sets: text to token files on disk, seq2seq and preference pairs, named sources."""
