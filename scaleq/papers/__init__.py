"""The papers' tables, reproduced: their rows and published figures (:mod:`.tables`), their data
(:mod:`.datasets`) and the runner that trains them and writes docs/results.md (:mod:`.reproduce`)."""
