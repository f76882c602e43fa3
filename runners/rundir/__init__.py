"""The run directory: every file a run writes, and the readers of those files.

A run directory holds:

* ``fingerprint.json``: what decides the run's answers (:mod:`runners.execution.fingerprint`);
* ``predictions.csv``: one row per sample (:data:`PREDICTION_COLUMNS`, then one column per
  quality metric), in dataset order once the run ends;
* ``metrics.csv``: one row of counts, timing, resources and mean quality;
* ``metrics_by_group.csv``: quality per document class and question type;
* ``answers.csv``: the answers in VLMHyperBench's format, ``id;model_answer`` (UTF-8 with BOM),
  ``id`` the sample's 0-based position in the annotation file, as their evaluator reads it;
* ``environment.json``: versions, device, git commit, seed;
* ``job.json`` (sweep jobs only): the job's number, status and error, for the sweep summary;
* ``.hydra/``: Hydra's record of the config, enough to reproduce the run;
* for a run split into shards (:mod:`runners.execution.shards`), ``shards/<i>-of-<n>/`` per
  shard: its own predictions.csv as answered, ``shard.json`` (what its last attempt cost), and its
  environment.json, job.json and .hydra/; the files above are the merged run's, and
  ``shards.csv`` has a row per shard.

While a run (or a shard) answers, it holds a lock on ``.lock`` beside its predictions.csv, so
a second process started into the same place stops at once instead of writing beside it.

predictions.csv is appended to one batch at a time, each batch written in full before the next,
so a run killed at any point (``kill -9``, a full disk) loses at most the batch in flight; a
torn last row, even one cut inside a multi-byte character, is dropped when the run resumes.
Every other file is written to a temporary file and renamed over the old one, so it is
either complete or as it was. A write that fails (a full disk) ends the run with one line
naming the file, and leaves no temporary file behind.
"""
