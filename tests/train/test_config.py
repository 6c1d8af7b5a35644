"""facejax.train.config.parse_arg: the one parser of every config file's `:arg`."""
import pytest

from facejax.train.config import parse_arg


def test_keys_are_cast_to_their_defaults_types_and_bare_words_set_bools():
  a = parse_arg('tiny,batch=64,data_dir=/tmp/x,scale=0.5,flip=false', tiny=False, batch=256, data_dir='', scale=1.0,
                flip=True)
  assert (a.tiny, a.batch, a.data_dir, a.scale, a.flip) == (True, 64, '/tmp/x', 0.5, False)
  assert parse_arg(None, tiny=False).tiny is False and parse_arg('', batch=3).batch == 3


def test_a_bare_word_fills_the_bare_key():
  a = parse_arg('folders,size=112', 'configs/x.py', bare='data', data='synthetic', size=0)
  assert (a.data, a.size) == ('folders', 112)


@pytest.mark.parametrize('arg, kwargs, message', [
    ('bacth=3', dict(batch=256), r"configs/x.py:bacth=3: unknown key 'bacth'; expected one of \['batch'\]"),
    ('lfw,bogus', dict(lfw=False), r"configs/x.py:lfw,bogus: unknown switch 'bogus'; expected key=value or one of "
                                   r"\['lfw'\]"),
    ('batch=big', dict(batch=256), r"configs/x.py:batch=big: batch=.big.: expected type int"),
])
def test_bad_args_name_the_config_and_what_it_takes(arg, kwargs, message):
  with pytest.raises(ValueError, match=message):
    parse_arg(arg, 'configs/x.py', **kwargs)
