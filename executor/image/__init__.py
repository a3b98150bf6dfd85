"""Building images, byte for byte. The modules of this package:

    seal.py          seal(commit, base, spec) -> Sealed: the experiment image and its ID, a pure function
    layer.py         deterministic tar layers and image configs (the one archive writer, config builder)
    base.py          the base image: built once from Dockerfile.train, then made reproducible
    rootfs.py        a base's root filesystem, normalized
    assemble.py      a base image assembled from that rootfs
    docker_build.py  the one `docker build` of a base

The package __init__ imports nothing.
"""
