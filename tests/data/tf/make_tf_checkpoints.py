"""Regenerate the checkpoints in this folder with real TensorFlow (not a project dependency):

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu
    /tmp/tfvenv/bin/python tests/data/tf/make_tf_checkpoints.py

v1.ckpt: tf.compat.v1 Saver, V1 (single file, the format of TF-slim's released inception_v3.ckpt);
v2.ckpt.*: the same variables with the V2 Saver; tf2.ckpt.*: a TF2 tf.train.Checkpoint, which adds a
string tensor (the object graph). tests/test_tfslim.py holds the same values and reads all three.
The committed files were written by tensorflow-cpu 2.21.0.
"""
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

HERE = os.path.dirname(os.path.abspath(__file__))
VALUES = {
    "InceptionV3/Conv2d_1a_3x3/weights": np.arange(108, dtype=np.float32).reshape(3, 3, 3, 4) / 7 - 2,
    "InceptionV3/Conv2d_1a_3x3/BatchNorm/beta": np.array([0.5, -1.25, 3.0, 1e-3], np.float32),
    "f64": np.array([[1.5, -2.25], [1e300, -0.0]], np.float64),
    "i32": np.array([1, -2, 2**31 - 1], np.int32),
    "i64": np.array([-(2**40), 7], np.int64),
    "f16": np.array([0.5, -65504.0, 1.0 / 3], np.float16),
    "scalar": np.float32(3.25),
    "b": np.array([True, False, True]),
    "u8": np.array([0, 255, 7], np.uint8),
    "i8": np.array([-128, 5], np.int8),
    "i16": np.array([-300, 32767], np.int16),
}
BF16 = [1.0, -2.5, 0.015625]   # exactly representable in bfloat16


def saver_files() -> None:
    v1 = tf.compat.v1
    with tf.Graph().as_default():
        for name, value in VALUES.items():
            v1.Variable(value, name=name)
        step = v1.train.get_or_create_global_step()
        common = v1.global_variables()
        bf16 = v1.Variable(tf.constant(BF16, dtype=tf.bfloat16), name="bf16")   # V1 cannot save bfloat16
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            session.run(v1.assign(step, 12345))
            v1.train.Saver(common, write_version=v1.train.SaverDef.V1).save(
                session, os.path.join(HERE, "v1.ckpt"), write_meta_graph=False, write_state=False)
            v1.train.Saver(common + [bf16]).save(session, os.path.join(HERE, "v2.ckpt"),
                                                 write_meta_graph=False, write_state=False)


def tf2_file() -> None:
    tmp = tempfile.mkdtemp()
    ckpt = tf.train.Checkpoint(w=tf.Variable(np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)),
                               step=tf.Variable(3, dtype=tf.int64))
    ckpt.write(os.path.join(tmp, "ckpt"))
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copy(os.path.join(tmp, "ckpt" + suffix), os.path.join(HERE, "tf2.ckpt" + suffix))
    shutil.rmtree(tmp)


if __name__ == "__main__":
    saver_files()
    tf2_file()
