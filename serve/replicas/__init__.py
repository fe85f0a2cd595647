"""`loradock serve --replicas N`: N full loradock servers as Ray Serve replicas behind one adapter-aware ingress.

Only the ``--replicas`` path imports this package's Ray modules; the single-process server never imports Ray.
"""
