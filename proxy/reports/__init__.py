"""HTTP surfaces over the analytics store: ``/admin/spend``, ``/admin/chargeback.csv`` and the
``/dashboard`` (its routes and cookie sessions). The queries themselves live in ``analytics``."""
