"""Getting nodes: allocations, the local cluster, batch jobs and the ensemble clusters."""
