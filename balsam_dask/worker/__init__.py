"""The worker side: what runs a balsam task on its node-worker (attempts, processes, MPI, results)."""
