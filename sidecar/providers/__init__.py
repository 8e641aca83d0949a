"""Knowledge of the model APIs: request bodies and error shapes, per API family.

Pure functions over bytes and dicts; no I/O.
"""
