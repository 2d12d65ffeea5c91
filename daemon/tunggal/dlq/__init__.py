"""The dead-letter queue: inspect, re-apply and purge `public.tunggal_dead_letters`.

`store` reads and deletes entries (plain SQL), `replay` re-applies them through the current
mappings and the same sink, and `cli` wires both to `tunggal dlq ...`.
"""
