"""StudioGAN checkpoints -> our params: outputs equal StudioGAN's own, in eval mode.

The fixture tests/fixtures/studiogan_models.npz was written by scripts/make_studiogan_fixture.py
from StudioGAN's own model code (big_resnet / resnet / deep_conv, heads W/O, AC, PD, D2DCE, SN on
and off, attention at several blocks) with random weights whose SN u/v are stale (a weight step
after the last power iteration), so copying u would not be exact; the conversion must be.
Needs no StudioGAN and no network.
"""

import collections
import io
import json
import os
import pathlib
import pickle
import types
import zipfile

import jax
import numpy as np
import pytest

from configs import default
from reacgan_jax import errors, models
from reacgan_jax.ops import spectral_norm
from reacgan_jax.platform import workdir_lock
from reacgan_jax.studiogan import convert as convert_studiogan

FIXTURE = np.load(pathlib.Path(__file__).resolve().parents[1] / 'fixtures' / 'studiogan_models.npz')
META = json.loads(str(FIXTURE['meta']))
# float32 forward passes in two frameworks (different conv algorithms and summation orders) on
# the same weights; sigma is matched in float64. Measured (this fixture): G images max |diff|
# 7.7e-7; D outputs max |diff| / (max |ref| + 1) 2.6e-7. Bounds: ATOL_G, and ATOL_D times that
# scale, ~10x above. Copying torch's u instead of exact_u: G 3.6e-2, D adv 1-2% off (red).
ATOL_G, ATOL_D = 1e-5, 3e-6


def _state(prefix):
  flat, out, offset = FIXTURE[f'{prefix}/flat'].astype(np.float32), {}, 0
  for name, shape in META['index'][prefix]:
    n = int(np.prod(shape))
    out[name] = flat[offset:offset + n].reshape(shape)
    offset += n
  assert offset == flat.size
  return out


def _config(overrides):
  c = default.get_config()
  c.data.image_size, c.data.num_classes = 32, META['num_classes']
  for dotted, value in overrides.items():
    section, key = dotted.split('.')
    c[section][key] = value
  return c


def _check_layout(config, which, module, params, stats, sn, *inputs):
  rngs = {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)}
  ref = jax.eval_shape(lambda: module.init(rngs, *inputs))  # shapes only: nothing compiled
  convert_studiogan.check_like(params, ref['params'], 'params')
  convert_studiogan.check_like(stats, ref.get('batch_stats', {}), 'batch_stats')
  ref_sn = jax.eval_shape(lambda: spectral_norm.init_sn_state(
      ref['params'], jax.random.PRNGKey(2), models.sn_predicate(config, which),
      rows_u=spectral_norm.options(config)['rows_u']))
  convert_studiogan.check_like(sn, ref_sn, 'sn_state')


def _apply(config, module, params, stats, sn, *inputs):
  w, _ = spectral_norm.spectral_normalize(params, sn, update=False,
                                          **spectral_norm.options(config))
  variables = {'params': w, **({'batch_stats': stats} if stats else {})}
  return module.apply(variables, *inputs, train=False)


@pytest.mark.parametrize('case', sorted(META['G']))
def test_generator_matches_studiogan(case):
  config = _config(META['G'][case])
  g, _ = models.build_models(config)
  z, y = FIXTURE[f'G/{case}/z'], FIXTURE[f'G/{case}/y'].astype(np.int32)
  params, stats, sn = convert_studiogan.convert_generator(_state(f'G/{case}'), config)
  _check_layout(config, 'g', g, params, stats, sn, z, y)
  images = np.asarray(_apply(config, g, params, stats, sn, z, y))
  want = FIXTURE[f'G/{case}/images']
  assert np.mean(np.abs(want) < 0.9) > 0.9  # tanh mostly unsaturated: the comparison bites
  np.testing.assert_allclose(images, want, rtol=0, atol=ATOL_G)


@pytest.mark.parametrize('case', sorted(META['D']))
def test_discriminator_matches_studiogan(case):
  config = _config(META['D'][case])
  _, d = models.build_models(config)
  x, y = FIXTURE['D_x'].astype(np.float32), FIXTURE['D_y'].astype(np.int32)
  params, stats, sn = convert_studiogan.convert_discriminator(_state(f'D/{case}'), config)
  _check_layout(config, 'd', d, params, stats, sn, x, y)
  out = _apply(config, d, params, stats, sn, x, y)
  scale = lambda a: np.abs(a).max() + 1.0
  h = FIXTURE[f'D/{case}/h']
  np.testing.assert_allclose(out.h, h, rtol=0, atol=ATOL_D * scale(h))
  adv = FIXTURE[f'D/{case}/adv_output']
  np.testing.assert_allclose(out.adv, adv, rtol=0, atol=ATOL_D * scale(adv))
  method = config.model.cond_method
  if method == 'acgan':
    cls = FIXTURE[f'D/{case}/cls_output']
    np.testing.assert_allclose(out.class_logits, cls, rtol=0, atol=ATOL_D * scale(cls))
  if method == 'reacgan':  # StudioGAN returns them L2-normalised (normalize_d_embed=True)
    unit = lambda a: np.asarray(a) / np.linalg.norm(a, axis=1, keepdims=True)
    np.testing.assert_allclose(unit(out.embed), FIXTURE[f'D/{case}/embed'], atol=ATOL_D * 2)
    np.testing.assert_allclose(unit(out.proxy), FIXTURE[f'D/{case}/proxy'], atol=ATOL_D * 2)


@pytest.mark.parametrize('case', ['big_resnet_PD', 'big_resnet_D2DCE'])
def test_legacy_sn_rules_convert_exactly_too(case):
  """sn_eval='recompute', sn_embedding_u='width' (legacy): exact_u instead of copying u, v."""
  config = _config({**META['D'][case], 'model.sn_eval': 'recompute',
                    'model.sn_embedding_u': 'width'})
  _, d = models.build_models(config)
  x, y = FIXTURE['D_x'].astype(np.float32), FIXTURE['D_y'].astype(np.int32)
  params, stats, sn = convert_studiogan.convert_discriminator(_state(f'D/{case}'), config)
  _check_layout(config, 'd', d, params, stats, sn, x, y)
  adv = FIXTURE[f'D/{case}/adv_output']
  out = _apply(config, d, params, stats, sn, x, y)
  np.testing.assert_allclose(out.adv, adv, rtol=0, atol=ATOL_D * (np.abs(adv).max() + 1))


def _save_pth(path, state, **extra):
  torch = pytest.importorskip('torch')
  torch.save({'state_dict': {k: torch.from_numpy(v) for k, v in state.items()}, 'step': 7,
              **extra}, path)


class _NotATensor:
  pass


def test_torch_files_are_read_weights_only(tmp_path):
  pytest.importorskip('torch')
  state = _state('D/big_resnet_PD')
  _save_pth(tmp_path / 'ok.pth', state)
  loaded = convert_studiogan.load_state_dict(str(tmp_path / 'ok.pth'))
  assert sorted(loaded) == sorted(state)
  _save_pth(tmp_path / 'evil.pth', state, payload=_NotATensor())
  with pytest.raises(ValueError, match=r'evil.pth.*weights_only=True'):
    convert_studiogan.load_state_dict(str(tmp_path / 'evil.pth'))


# ---- files as StudioGAN writes them (issue 25) -------------------------------------------------


def _torch_state_dict(torch, state):
  """As nn.Module.state_dict() returns it: an OrderedDict of tensors with `_metadata`."""
  out = collections.OrderedDict((k, torch.from_numpy(v.copy())) for k, v in state.items())
  out._metadata = collections.OrderedDict(  # noqa: SLF001 (torch sets it so)
      [('', {'version': 1})] + [(k.rsplit('.', 1)[0], {'version': 1}) for k in state if '.' in k])
  return out


def _adam_state_dict(torch, state):
  """torch.optim.Adam(...).state_dict() after one step (exp_avg, exp_avg_sq, step tensors)."""
  params = [torch.from_numpy(v.copy()).requires_grad_() for v in state.values()]
  opt = torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999), eps=1e-6)
  for p in params:
    p.grad = torch.ones_like(p)
  opt.step()
  return opt.state_dict()


class _Numpy1Pickler(pickle.Pickler):
  """Writes what numpy 1.x pickles a numpy scalar as: the global numpy.core.multiarray.scalar
  (numpy 2 writes numpy._core.multiarray.scalar; the rest of the bytes are the same)."""

  def __init__(self, file, protocol=None, **kwargs):
    self._out, self._buf = file, io.BytesIO()
    super().__init__(self._buf, protocol, **kwargs)

  def dump(self, obj):
    super().dump(obj)
    data = self._buf.getvalue()
    new, old = b'cnumpy.core.multiarray\nscalar\n', b'cnumpy._core.multiarray\nscalar\n'
    self._out.write(data.replace(old, new))


_NUMPY1_PICKLE = types.SimpleNamespace(__name__='numpy1_pickle', __version__='1',
                                       Pickler=_Numpy1Pickler)


def _save_like_studiogan(ckpt_dir, states, when='best', step=7, pickle_module=pickle):
  """StudioGAN's worker.save + misc.save_model (src/worker.py `save`, src/utils/misc.py
  `save_model`): torch.save(states, 'model={model}-{when}-weights-step={step}.pth') for G, D
  and G_ema, with the metadata worker.save puts in each (best_fid: the numpy.float64 that
  metrics/fid.py's frechet_inception_distance returns; aa_p one too once ADA adjusts it)."""
  torch = pytest.importorskip('torch')
  g, d, g_ema = (states[k] for k in ('G', 'D', 'G_ema'))
  files = {
      'G': {'state_dict': _torch_state_dict(torch, g), 'optimizer': _adam_state_dict(torch, g)},
      'D': {'state_dict': _torch_state_dict(torch, d), 'optimizer': _adam_state_dict(torch, d),
            'seed': 82624, 'run_name': 'CIFAR10-BigGAN-PD-train-2022_01_01_00_00_00',
            'step': step, 'epoch': 3, 'topk': 64, 'aa_p': np.float64(0.0375),
            'best_step': step, 'best_fid': np.float64(23.418765432),
            'best_fid_ckpt': str(ckpt_dir),
            'lecam_emas': {'G_loss': 7777, 'D_loss_real': 7777, 'D_loss_fake': 7777,
                           'D_real': 0.25, 'D_fake': -0.5, 'decay': 0.9, 'start_itr': 1000}},
      'G_ema': {'state_dict': _torch_state_dict(torch, g_ema)},
  }
  for model, obj in files.items():
    torch.save(obj, os.path.join(ckpt_dir, f'model={model}-{when}-weights-step={step}.pth'),
               pickle_module=pickle_module)


@pytest.mark.parametrize('numpy_pickle', ['numpy2', 'numpy1'])
def test_studiogan_checkpoint_folder_converts(tmp_path, numpy_pickle):
  """G / D / G_ema files written as StudioGAN writes them, metadata and all, read and converted
  as the command does (find_checkpoints, convert_files): the networks compute StudioGAN's
  outputs (the fixture's, as above)."""
  torch = pytest.importorskip('torch')
  g_case, d_case = 'big_resnet_cond', 'big_resnet_PD'
  _save_like_studiogan(tmp_path, {'G': _state(f'G/{g_case}'), 'D': _state(f'D/{d_case}'),
                                  'G_ema': _state(f'G/{g_case}')},
                       pickle_module=_NUMPY1_PICKLE if numpy_pickle == 'numpy1' else pickle)
  files = convert_studiogan.find_checkpoints(str(tmp_path), 'best')
  with zipfile.ZipFile(files['D']) as z:  # the pickle names the numpy of the writer
    pkl = z.read(next(n for n in z.namelist() if n.endswith('/data.pkl')))
  scalar = {'numpy1': b'cnumpy.core.multiarray\nscalar\n',
            'numpy2': b'cnumpy._core.multiarray\nscalar\n'}
  assert scalar[numpy_pickle] in pkl and b'_reconstruct' not in pkl
  raw = torch.load(files['D'], weights_only=False)  # the test's own file: trusted
  assert type(raw['best_fid']) is np.float64 and raw['epoch'] == 3
  config = _config({**META['G'][g_case], **META['D'][d_case]})
  g_net, d_net = models.build_models(config)
  g, d, g_ema = convert_studiogan.convert_files(files, config)
  z, y = FIXTURE[f'G/{g_case}/z'], FIXTURE[f'G/{g_case}/y'].astype(np.int32)
  for params, stats, sn in (g, g_ema):
    images = _apply(config, g_net, params, stats, sn, z, y)
    np.testing.assert_allclose(images, FIXTURE[f'G/{g_case}/images'], rtol=0, atol=ATOL_G)
  x, yd = FIXTURE['D_x'].astype(np.float32), FIXTURE['D_y'].astype(np.int32)
  adv = FIXTURE[f'D/{d_case}/adv_output']
  out = _apply(config, d_net, *d, x, yd)
  np.testing.assert_allclose(out.adv, adv, rtol=0, atol=ATOL_D * (np.abs(adv).max() + 1))


class _Shell:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


class _OrderedSub(collections.OrderedDict):
  """A class of the test's own: not a global weights_only allows."""


def _refused_payloads(tmp_path):
  return {
      'os_system': _Shell(tmp_path / 'ran'),
      'ordereddict_subclass': _OrderedSub(a=1),
      'object_array': np.array([1, 'a'], dtype=object),
      'float_array': np.zeros(3),
      'random_state': np.random.RandomState(0).get_state(),
      'float32_scalar': np.float32(1.5),
  }


@pytest.mark.parametrize('payload', ['os_system', 'ordereddict_subclass', 'object_array',
                                     'float_array', 'random_state', 'float32_scalar'])
def test_anything_else_in_a_file_is_refused(tmp_path, payload):
  """Only numpy.float64 is allowed beyond weights_only's tensors and containers: code (os.system
  via __reduce__), other classes, numpy arrays (of objects or not), numpy.random's state and
  other numpy scalars are refused with one message, never unpickled."""
  torch = pytest.importorskip('torch')
  state = _state('D/big_resnet_PD')
  path = tmp_path / 'model=D-best-weights-step=7.pth'
  torch.save({'state_dict': _torch_state_dict(torch, state), 'best_fid': np.float64(1.0),
              'extra': _refused_payloads(tmp_path)[payload]}, path)
  with pytest.raises(ValueError, match=r'step=7.pth: not loadable with torch.load\(weights_only'
                     r'=True\) \(UnpicklingError: .*\)\. Only tensors'):
    convert_studiogan.load_state_dict(str(path))
  assert not (tmp_path / 'ran').exists()


def test_mismatched_config_is_named():
  config = _config(META['D']['big_resnet_PD'])
  state = _state('D/big_resnet_PD')
  config.model.cond_method = 'reacgan'
  with pytest.raises(ValueError, match="no tensor 'linear2"):
    convert_studiogan.convert_discriminator(state, config)
  config.model.cond_method = 'none'
  with pytest.raises(ValueError, match='have no place'):
    convert_studiogan.convert_discriminator(state, config)
  config.model.cond_method, config.model.apply_d_sn = 'pd', False
  with pytest.raises(ValueError, match='apply_d_sn'):
    convert_studiogan.convert_discriminator(state, config)


@pytest.mark.slow  # two train-state builds and an orbax save: ~2.5 min on a loaded 2-core CPU
def test_cli_writes_a_checkpoint_that_samples_like_studiogan(tmp_path):
  """StudioGAN folder (model=G-..., model=D-..., model=G_ema-..., as StudioGAN writes them:
  metadata and numpy.float64 best_fid included) -> CLI -> restore -> G(z)."""
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415

  from reacgan_jax.models import adapter  # noqa: PLC0415
  from reacgan_jax.platform import checkpoints
  from reacgan_jax.train import state as state_lib  # noqa: PLC0415

  overrides = {**META['G']['big_resnet_cond'], **META['D']['big_resnet_PD']}
  ckpt = tmp_path / 'studiogan_ckpt'
  ckpt.mkdir()
  _save_like_studiogan(ckpt, {'G': _state('G/big_resnet_cond'), 'D': _state('D/big_resnet_PD'),
                              'G_ema': _state('G/big_resnet_cond')})
  lines = ['from configs import default', '', '', 'def get_config():',
           '  c = default.get_config()', '  c.data.image_size = 32',
           f"  c.data.num_classes = {META['num_classes']}"]
  lines += [f'  c.{k} = {v!r}' for k, v in overrides.items()]
  (tmp_path / 'cfg.py').write_text('\n'.join(lines + ['  return c', '']))
  root = str(pathlib.Path(__file__).resolve().parents[2])
  subprocess.run([sys.executable, '-m', 'reacgan_jax.studiogan.convert', str(ckpt),
                  f'--config={tmp_path / "cfg.py"}', f'--workdir={tmp_path / "run"}'],
                 check=True, cwd=root, env=dict(os.environ, PYTHONPATH=root))
  config = _config(overrides)
  model = adapter.build(config)
  g = model.generator
  fresh = state_lib.create_train_state(config, model, jax.random.PRNGKey(0))
  state, step = checkpoints.Checkpointer(str(tmp_path / 'run'), config).restore(
      checkpoints.abstract_like(fresh))
  assert step == 0
  z, y = FIXTURE['G/big_resnet_cond/z'], FIXTURE['G/big_resnet_cond/y'].astype(np.int32)
  for net in (state.g, state.ema):  # each with its own SN vectors (G_ema's kept, issue 17)
    images = _apply(config, g, net.params, net.collections.get('batch_stats', {}), net.sn,
                    z, y)
    np.testing.assert_allclose(images, FIXTURE['G/big_resnet_cond/images'], rtol=0, atol=ATOL_G)


@pytest.mark.slow  # a train-state build, an orbax save and restore: ~90 s on a loaded 2-core CPU
def test_write_checkpoint_keeps_g_emas_own_sn_vectors(tmp_path):
  """G_ema = the fixture's G; G = the same weights with other u, v. The EMA generator restored
  from the checkpoint samples StudioGAN's images with G_ema's vectors (exact as for G above);
  with G's vectors it would not (the test bites: 1e-3 off)."""
  from reacgan_jax import sampling
  from reacgan_jax.models import adapter  # noqa: PLC0415
  from reacgan_jax.platform import checkpoints
  from reacgan_jax.train import state as state_lib  # noqa: PLC0415

  overrides = {**META['G']['big_resnet_cond'], **META['D']['big_resnet_PD']}
  config = _config(overrides)
  config.model.sn_eval = 'stored'  # the fixture's images: torch eval mode, no power iteration
  g_state = _state('G/big_resnet_cond')
  rng = np.random.default_rng(0)
  other = {k: (lambda x: x / np.linalg.norm(x))(rng.normal(size=v.shape)).astype(np.float32)
           if k.endswith(('weight_u', 'weight_v')) else v for k, v in g_state.items()}
  g, g_ema = (convert_studiogan.convert_generator(x, config) for x in (other, g_state))
  d = convert_studiogan.convert_discriminator(_state('D/big_resnet_PD'), config)
  convert_studiogan.write_checkpoint(config, str(tmp_path), g, d, g_ema)
  model = adapter.build(config)
  state, _ = checkpoints.Checkpointer(str(tmp_path), config).restore(
      checkpoints.abstract_like(state_lib.create_train_state(config, model,
                                                             jax.random.PRNGKey(0))))
  for a, b in zip(jax.tree.leaves(state.ema.sn), jax.tree.leaves(g_ema[2]), strict=True):
    np.testing.assert_array_equal(a, b)
  z, y = FIXTURE['G/big_resnet_cond/z'], FIXTURE['G/big_resnet_cond/y'].astype(np.int32)
  want = FIXTURE['G/big_resnet_cond/images']
  sampler = sampling.Sampler(config, model)
  np.testing.assert_allclose(sampler.sample_fn(state)(z, y), want, rtol=0, atol=ATOL_G)
  assert np.abs(np.asarray(sampler.sample_fn(state, use_ema=False)(z, y)) - want).max() > 1e-3


def test_conversion_refuses_a_workdir_with_checkpoints_and_changes_nothing(tmp_path):
  # Issue 26: converting into a run's workdir rotated (deleted) its older checkpoints, or kept an
  # earlier conversion while saying it converted the new files.
  run = tmp_path / 'run'
  (run / 'checkpoints' / '120').mkdir(parents=True)
  (run / 'checkpoints' / '120' / 'state').write_text('a run of the user')
  before = sorted(p.relative_to(run) for p in run.rglob('*'))
  with pytest.raises(errors.InputError, match=r'already holds checkpoints.*new --workdir'):
    convert_studiogan.write_checkpoint(None, str(run), None, None)
  assert sorted(p.relative_to(run) for p in run.rglob('*')) == before  # no lock file left either


def test_conversion_takes_the_workdir_lock(tmp_path):
  with workdir_lock.WorkdirLock(str(tmp_path), 'train', process_index=0, process_count=1):
    with pytest.raises(errors.WorkdirLockedError):
      convert_studiogan.write_checkpoint(None, str(tmp_path), None, None)


def test_a_config_training_would_refuse_is_refused_before_anything_is_read(tmp_path):
  # Issue 26: the converter wrote any --config beside the weights; training on the converted
  # workdir then refused it. Now: one line naming the key, the workdir never created.
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415

  root = str(pathlib.Path(__file__).resolve().parents[2])
  r = subprocess.run([sys.executable, '-m', 'reacgan_jax.studiogan.convert', str(tmp_path / 'ckpt'),
                      f'--config={root}/configs/tiny.py', '--config.train.batch_size=0',
                      f'--workdir={tmp_path / "run"}'], cwd=root, capture_output=True, text=True,
                     env=dict(os.environ, PYTHONPATH=root))
  assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
  assert 'config.train.batch_size=0' in r.stderr.strip().splitlines()[-1]
  assert not (tmp_path / 'run').exists()


def test_a_config_file_that_cannot_load_is_one_line(tmp_path):
  # A missing --config file, and a config importing `configs` run from another folder through
  # `python -m` (`reacgan-jax convert-studiogan` makes it importable): tracebacks before.
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415

  root = str(pathlib.Path(__file__).resolve().parents[2])
  for config, fragment in ((tmp_path / 'none.py', 'No such file'),
                           (f'{root}/configs/tiny.py', 'runs from the repository root')):
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}  # as a user's shell
    r = subprocess.run([sys.executable, '-m', 'reacgan_jax.studiogan.convert', str(tmp_path),
                        f'--config={config}', f'--workdir={tmp_path / "run"}'], cwd=tmp_path,
                       capture_output=True, text=True, env=env)
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert fragment in r.stderr.strip().splitlines()[-1]
  # With the config loadable, a folder without StudioGAN files is one line too.
  r = subprocess.run([sys.executable, '-m', 'reacgan_jax.studiogan.convert', str(tmp_path),
                      f'--config={root}/configs/tiny.py', f'--workdir={tmp_path / "run"}'],
                     cwd=root, capture_output=True, text=True,
                     env=dict(os.environ, PYTHONPATH=root))
  assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
  assert 'no model=G-best-weights' in r.stderr.strip().splitlines()[-1]
