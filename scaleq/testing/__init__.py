"""The equivariance check (:func:`scaleq.testing.equivariance.check_equivariance`), for the
tests and for your own models. The fixtures the tests share live in tests/support/."""
