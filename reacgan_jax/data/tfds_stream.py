"""Streaming a TFDS train split that does not fit in memory (ImageNet), per process.

Moved out of `data_sources` (which re-exports it) to keep that module small; used by
`input_pipeline` when config.data.load streams.
"""

from absl import logging


def tfds_stream(builder, config, *, start_example: int, process_index: int, process_count: int,
                local_batch: int):
  """Streams this process's share of the train split: yields (uint8 [b, S, S, 3], int32 [b]).

  Each process reads only `tfds.split_for_jax_process` of the split, so the global batch is the
  concatenation of the processes' batches. The order is a deterministic function of the seed
  for a fixed process count (seeded file and buffer shuffles, deterministic tf.data); resuming
  skips `start_example` encoded records before decoding, which replays the same order.
  """
  import tensorflow as tf  # noqa: PLC0415
  import tensorflow_datasets as tfds  # noqa: PLC0415

  size, crop, seed = config.data.image_size, config.data.crop, config.seed
  split = tfds.split_for_jax_process(config.data.train_split, process_index=process_index,
                                     process_count=process_count)
  read_config = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False)
  ds = builder.as_dataset(split=split, shuffle_files=True, read_config=read_config,
                          decoders={'image': tfds.decode.SkipDecoding()})
  ds = ds.repeat().shuffle(config.data.shuffle_buffer, seed=seed)
  if start_example:
    logging.info('Resuming the TFDS stream: skipping %d records.', start_example)
    ds = ds.skip(start_example)

  def decode(ex):
    img = tf.io.decode_image(ex['image'], channels=3, expand_animations=False)
    if crop == 'center':  # as resize_pil: the centred min(H, W) square
      h, w = tf.shape(img)[0], tf.shape(img)[1]
      s = tf.minimum(h, w)
      img = tf.image.crop_to_bounding_box(img, (h - s) // 2, (w - s) // 2, s, s)
    img = tf.image.resize(img, (size, size), method='lanczos3', antialias=True)
    img = tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)
    return img, tf.cast(ex['label'], tf.int32)

  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=True).prefetch(2)
  yield from tfds.as_numpy(ds)
