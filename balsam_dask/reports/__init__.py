"""Reports of what ran: computations over the store's aggregates (pure: ``records``, ``window``,
``timeline``, ``capacity``, ``stats``, ``frames``) and their renderings (``plots``: PNG with
matplotlib; ``html``: one self-contained page). ``balsam_dask.report`` and ``Store.report``
make a :class:`~balsam_dask.reports.frames.Report`."""
