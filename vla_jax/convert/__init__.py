"""Importers of released weights (``vla-jax convert KIND SRC --out DIR``).

Each importer reads a source checkpoint into a flat dict of named arrays,
renames and reshapes them into our parameter paths (:mod:`.paligemma`,
:mod:`.openpi`), and :mod:`.weights` checks them against the target model,
fills the rest by rule and writes a weights directory in the release layout,
which ``init.source`` reads like any release (``Policy`` refuses it until a
fine-tune has given it a robot: converted weights have no embodiment). The report
(``conversion_report.json``) lists every source tensor as mapped or unused and
every target parameter as filled or newly initialized.
"""
