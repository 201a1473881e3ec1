"""The batch jobs on a Ray cluster (``compute.engine = ray``): the same library code as the
local path, run by Ray Data actor pools and Ray Train workers. Imports Ray lazily: the local
engine never needs it (``pip install -e '.[ray]'``)."""
