"""Labelled catalog records, read from the team's files: the trainer's input, the simulator's listings.

* :mod:`shared.catalog.records`: the :class:`~shared.catalog.records.Record` type and its fingerprint.
* :mod:`shared.catalog.flipkart`: the Flipkart sample (category trees, specifications).
* :mod:`shared.catalog.readers`: generic CSV / JSONL readers and :func:`~shared.catalog.readers.load_records`.
"""
