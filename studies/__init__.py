"""The research record: how the defaults of clusterssl were measured and chosen, one sub-package
per study (README.md indexes them). Its scripts import clusterssl; clusterssl never imports this
package. Run a script from the repository root as `python -m studies.<study>.<script>`."""

#: the methods the studies measured (the built-in nine, in the report's order); a method added
#: later is not part of their record
METHODS = ("carl", "coke", "cueco", "cc", "cadc", "simclr", "swav", "byol", "moco_v2")
#: the protocols on frozen features they measured, likewise
PROTOCOLS = ("linear", "knn", "cluster")


def studied_columns() -> list[tuple]:
    """The report's columns of the protocols the studies measured."""
    from clusterssl.report import frozen_columns

    return [c for c in frozen_columns() if c[1] in PROTOCOLS]
