"""Reconciliation with the sources, over plain connections to them: asking Debezium to read
tables again (incremental snapshots through the source's signal table), and `tunggal verify`.

The runner never reads a source itself; what needs a source's own answer lives here.
"""
