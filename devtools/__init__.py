"""Tools for developers, shared by the tests and the benchmarks: real local servers on free ports
(Redis, Triton, PostgreSQL, the service, the study), real media made on the spot, and the
study's load helpers. Not part of the installed package nor of the service image."""
