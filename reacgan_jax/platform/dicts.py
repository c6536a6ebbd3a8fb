"""Nested dicts by dotted key: what config files, tensorboard hparams and YAML tables share."""


def flatten(tree: dict, prefix: str = '') -> dict:
  """{'model': {'stylegan2': {'w_dim': 512}}} -> {'model.stylegan2.w_dim': 512}: every leaf by
  its dotted path (clu.metric_writers.utils.flatten_dict's keys)."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out
