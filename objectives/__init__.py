"""The built-in objectives, one module each, installed as `beyondmle.objectives`.

Each registers itself with `beyondmle.api.register_objective` and is found through the
`beyondmle.objectives` entry-point group, as a third-party objective is (docs/architecture.md).
The contract they implement is `beyondmle.api.Objective`.
"""
