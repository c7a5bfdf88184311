"""Hugging Face checkpoint folders, both directions."""

from lmforge.hub.hf import Checkpoint, load_folder, save_folder

__all__ = ["Checkpoint", "load_folder", "save_folder"]
