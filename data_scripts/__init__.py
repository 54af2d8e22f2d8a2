"""Scripts that turn a user's download of the paper's data sets into one on-disk layout.

Each module (``mednist``, ``decathlon``, ``retinal_oct``, ``csaw_m``, ``mimic_cxr``,
``ukbiobank``) runs as ``python -m data_scripts.NAME --help`` and has a ``prepare(...)``
function; the shared work lives in ``data_scripts._common``. See ``data_scripts/README.md``.
"""
