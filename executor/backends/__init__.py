"""Where a sealed image runs. The modules of this package:

    interface.py   Job, Finished, the Backend protocol, and the checks every backend makes before it
                   starts anything (ensure_image, verify_image, check_container)
    factory.py     make_backend(name, ...): the backend a name of `[backend]` / --backend stands for
    local.py       `local` and `docker-host`: a Docker engine, this machine's or a remote one
    slurm.py       `slurm`: sbatch of slurm_node.sh, which verifies and runs the image on the node
    k8s.py         `kubernetes`: a Job per experiment, its pod pinned to the image digest
    outlog.py      how /out travels through a log stream (Kubernetes)

The package __init__ imports nothing, so that the adapters and the interface they build on load
without a circle.
"""
