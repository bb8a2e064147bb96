#!/usr/bin/python3
"""The documents of a shardtune dataset.h5 as token-id lines (one JSON array
per document, in source order), read with h5dump from Debian's hdf5-tools
(/tokens and /offsets, see io/dataset.h).

usage: dataset_ids.py DATASET.h5 OUT.ids
"""
import array
import os
import subprocess
import sys
import tempfile


def read(path, name, typecode):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "raw")
        subprocess.run(["h5dump", "-d", name, "-b", "LE", "-o", out, path], check=True,
                       stdout=subprocess.DEVNULL)
        a = array.array(typecode)
        with open(out, "rb") as f:
            a.frombytes(f.read())
    if sys.byteorder != "little":
        a.byteswap()
    return a


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    tokens, offsets = read(sys.argv[1], "/tokens", "i"), read(sys.argv[1], "/offsets", "q")
    with open(sys.argv[2], "w") as out:
        for i in range(len(offsets) - 1):
            out.write("[" + ", ".join(map(str, tokens[offsets[i]:offsets[i + 1]])) + "]\n")


if __name__ == "__main__":
    main()
