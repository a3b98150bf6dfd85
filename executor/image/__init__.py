"""Building images, byte for byte. The modules of this package:

    layer.py         the one layer writer (streamed tar, sorted, fixed mtime and owner), config builder
                     (canonical JSON; its sha256 is the image ID) and `docker load` archive writer
    seal.py          seal(commit, base, spec) -> Sealed: the experiment image and its ID, a pure function
    base.py          `sealab base`: the offline base assembled (reproducible) or `--from IMAGE` built
                     from Dockerfile.train; reused while its recipe is unchanged
    rootfs.py        the offline base's Debian root file system, from mmdebstrap, cached as a tar
    assemble.py      what goes into the offline base's three layers (rootfs, torch, sealab) and config
    docker_build.py  the Docker adapter for bases: the `--from` build, pull by digest, find, tag, inspect,
                     read a file

Experiment images and the offline base are written with layer.py, not `docker build`, so the same
inputs give the same image ID on any machine. The package __init__ imports nothing.
"""
