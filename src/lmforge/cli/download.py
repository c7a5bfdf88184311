"""`lmforge download NAME`: fetch a Hub model (or, with --dataset, a data set) into the cache and print its path.

A model gets the files lmforge reads (config, generation config, tokenizer, one set of weights) in the cache
transformers uses; the Hub is asked for the newest commit of the revision even when an older one is cached.
A data set gets the files of one split (`owner/name[:subset/split]`), or a named data set all its files.
"""

from __future__ import annotations

import argparse

from lmforge.errors import LmforgeError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME",
                   help="a Hub model id (gpt2, facebook/bart-large-cnn, optionally @revision); with --dataset a Hub "
                        "data set id (owner/name[:subset/split]) or a named data set (samsum, multi30k, ...)")
    p.add_argument("--dataset", action="store_true", help="NAME is a data set")


def run(args: argparse.Namespace) -> int:
    from lmforge.hub import remote

    if args.dataset:
        for path in download_dataset(args.name):
            print(path)
        return 0
    if remote.local_or_name(args.name, "model") is not None:
        raise LmforgeError(f"{args.name} is a local path, not a Hub name; there is nothing to download")
    repo = remote.Repo(*remote.split_name(args.name))
    print(remote.resolve_model(args.name) if remote.is_offline() else remote.download(repo))
    return 0


def download_dataset(name: str) -> list:
    from lmforge.data.hub import is_dataset_id, resolve_dataset
    from lmforge.data.public import PUBLIC, named_file

    if name in PUBLIC:
        return [p for p in (named_file(name, filename) for filename in PUBLIC[name]) if p.is_file()]
    if not is_dataset_id(name):
        raise LmforgeError(f"{name} is neither a named data set ({', '.join(PUBLIC)}) nor a Hub data set id "
                           "(owner/name[:subset/split])")
    return resolve_dataset(name).files
