"""Commands for operators and admins: `tunggal status`, `tunggal mapping ...`, `tunggal config`.

Each module holds one concern and no click code; `cli.py` wires them to the command line.
"""
