"""Plumbing: neither model nor agreement, but what every command needs.

Atomic writes (:mod:`.atomic`), one-line CLI errors (:mod:`.cli`), the shared
training flags (:mod:`.flags`), Flower process management (:mod:`.processes`)
and lazy package exports (:mod:`.lazy`).
"""
