"""``balsam-dask serve``: the service that runs a store's task database on a cluster."""
