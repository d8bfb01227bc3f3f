"""nixmig: hand-written SQL migrations per feature module, applied and tracked from Django.

The pure core (``nixmig.tree``, ``nixmig.plan``, ``nixmig.sqltext``) needs no database;
``nixmig.api`` is the public API the management commands wrap.
"""

__version__ = "0.1.0"
