"""Input pipeline throughput on CIFAR-10: images per second of each source, measured in one run.

    .venv/bin/python benchmarks/input_pipeline.py [--batch_size 128] [--batches 200]
        [--folder_images 3000] [--step_img_s N]

- npz: ../shared/data/cifar10.npz (cifar_rows); load time (decoded-array cache warm or cold) and
  batches/s of `create_train_iterator` with and without the prefetch thread.
- folder: a temporary tree of `--folder_images` CIFAR PNGs; decode img/s (cache off) and batch
  img/s.
- tfds: only when cifar10 is prepared locally (never downloads); otherwise says skipped.

`compare_with_train_step(pipeline_img_s, step_img_s)` prints whether the pipeline keeps up with
a train step; the train-step owner passes the step's real images/s (B * d_updates_per_step per
step) via `--step_img_s` or by calling it.
"""

import argparse
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


from configs import default  # noqa: E402
from reacgan_jax.data import pipeline as input_pipeline  # noqa: E402
from reacgan_jax.data import sources as data_sources  # noqa: E402

CIFAR_NPZ = REPO.parent / 'shared' / 'data' / 'cifar10.npz'


def _config(batch_size, **data):
  c = default.get_config()
  c.train.batch_size = batch_size
  c.data.image_size, c.data.num_classes, c.data.random_flip = 32, 10, True
  for k, v in data.items():
    setattr(c.data, k, v)
  return c


def iterate(config, batches: int) -> tuple[float, float]:
  """-> (seconds to the first batch, img/s over `batches` more), one process of one."""
  t0 = time.perf_counter()
  it = input_pipeline.create_train_iterator(config, process_index=0, process_count=1)
  next(it)
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(batches):
    batch = next(it)
  rate = batches * len(batch['label']) / (time.perf_counter() - t0)
  if hasattr(it, 'close'):
    it.close()
  return first, rate


def bench_npz(args) -> dict[str, float]:
  if not CIFAR_NPZ.exists():
    print(f'npz: skipped ({CIFAR_NPZ} not found)')
    return {}
  out = {}
  for prefetch in (0, 2):
    c = _config(args.batch_size, source='npz', npz_path=str(CIFAR_NPZ), npz_layout='cifar_rows',
                prefetch=prefetch)
    data_sources.clear_memo()  # time the load from the disk cache, not this process's memory
    first, rate = iterate(c, args.batches)
    out[f'npz prefetch={prefetch}'] = rate
    print(f'npz (prefetch={prefetch}): first batch after {first:.2f} s (load + cache), '
          f'{rate:,.0f} img/s')
  return out


def bench_folder(args) -> dict[str, float]:
  if not CIFAR_NPZ.exists():
    print('folder: skipped (needs the CIFAR npz to write PNGs)')
    return {}
  from PIL import Image  # noqa: PLC0415

  c = _config(args.batch_size, source='npz', npz_path=str(CIFAR_NPZ), npz_layout='cifar_rows')
  images, labels = input_pipeline.load_arrays(c, 'test')
  n = min(args.folder_images, len(images))
  with tempfile.TemporaryDirectory() as tmp:
    for i in range(n):
      d = pathlib.Path(tmp) / f'class_{labels[i]:02d}'
      d.mkdir(exist_ok=True)
      Image.fromarray(images[i]).save(d / f'{i:05d}.png')
    c = _config(args.batch_size, source='folder', folder=tmp, cache_dir='none', prefetch=2)
    t0 = time.perf_counter()
    input_pipeline.load_arrays(c, 'train')
    decode = n / (time.perf_counter() - t0)
    data_sources.clear_memo()
    _, rate = iterate(c, args.batches)
  print(f'folder ({n} PNGs): decode {decode:,.0f} img/s (first load, no cache); '
        f'batches {rate:,.0f} img/s')
  return {'folder decode': decode, 'folder batches': rate}


def bench_tfds(args) -> dict[str, float]:
  import tensorflow_datasets as tfds  # noqa: PLC0415

  builder = tfds.builder('cifar10')
  if not builder.is_prepared():
    print(f'tfds: skipped (cifar10 not prepared in {builder.data_dir_root}; '
          '`tfds build cifar10` on a machine with network)')
    return {}
  c = _config(args.batch_size, source='tfds', name='cifar10', load='memory', prefetch=2)
  first, rate = iterate(c, args.batches)
  print(f'tfds cifar10 (in memory): first batch after {first:.2f} s, {rate:,.0f} img/s')
  return {'tfds': rate}


def compare_with_train_step(pipeline_img_s: float, step_img_s: float) -> float:
  """Prints and returns pipeline img/s / train-step img/s (> 1: the input keeps up).

  step_img_s: real images a train step consumes per second, i.e. batch_size *
  d_updates_per_step / (seconds per step), measured by the train-step benchmark.
  """
  ratio = pipeline_img_s / step_img_s
  verdict = 'keeps up' if ratio > 1 else 'IS THE BOTTLENECK'
  print(f'input pipeline {pipeline_img_s:,.0f} img/s vs train step {step_img_s:,.0f} img/s: '
        f'ratio {ratio:.1f} (the pipeline {verdict})')
  return ratio


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--batches', type=int, default=200)
  parser.add_argument('--folder_images', type=int, default=3000)
  parser.add_argument('--step_img_s', type=float, default=0.0,
                      help='train-step real images/s to compare with (0: no comparison)')
  args = parser.parse_args()
  results = {**bench_npz(args), **bench_folder(args), **bench_tfds(args)}
  if args.step_img_s > 0 and results:
    best = max(v for k, v in results.items() if 'decode' not in k)
    compare_with_train_step(best, args.step_img_s)
  # Where the train step's figure will plug in: train-step owner, call
  # compare_with_train_step(results['npz prefetch=2'], <measured step img/s>) here.


if __name__ == '__main__':
  main()
