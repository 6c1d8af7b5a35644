"""Pretrained weights in: Keras .h5 (VGG16, ResNet50) and torchvision state dicts -> facejax variables.

  model, variables = load_pretrained('resnet50', 'resnet50.pth')        # in memory
  python -m launch.convert --from=torchvision --arch=resnet50 --src=resnet50.pth --out=DIR   # checkpoint
  arch, variables, metadata = facejax.runs.load_converted(DIR)
  face_variables, report = transfer_backbone(face_variables, variables)  # backbone only; heads stay new
  fn, params = tfjs_function(read_tfjs_graph('models/mobilefacenet.json'))  # TensorFlow.js graph model -> jax.numpy
"""
from facejax.convert.keras_h5 import read_keras_h5
from facejax.convert.plan import ConversionReport
from facejax.convert.pretrained import Converted, convert_pretrained, convert_to_checkpoint, load_pretrained
from facejax.convert.tfjs import read_tfjs_graph, tfjs_function
from facejax.convert.torchvision import read_state_dict
from facejax.convert.transfer import transfer_backbone
