"""Training from history, relationally: models as relational algebra, gradients derived as SQL.

A model's forward pass is written over keyed relations (:mod:`.ir`); its backward pass is derived
operator by operator (:mod:`.autodiff`) and lowered to SQL (:mod:`.sql`) that DuckDB or Spark
runs (:mod:`.engines`); :mod:`.driver` is the training loop. Nothing here imports an engine's
package until that engine is opened.
"""
