// Reference embeddings for tests/convert/test_tfjs.py: TensorFlow.js's own pure-JavaScript CPU backend runs a
// graph model (model.json + shards) on images, independently of facejax.convert.tfjs.
//   NODE_PATH=DIR/node_modules node tfjs_reference.js MODEL_JSON IMAGES_F32 N H W C OUT_JSON
// IMAGES_F32: N*H*W*C little-endian float32 (NHWC). OUT_JSON: {output name: {shape, data}} for every model output.
const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs');

async function main() {
  const [modelPath, imagesPath, n, h, w, c, outPath] = process.argv.slice(2);
  const model = JSON.parse(fs.readFileSync(modelPath, 'utf8'));
  const dir = path.dirname(modelPath);
  const weightSpecs = [];
  const buffers = [];
  for (const group of model.weightsManifest) {
    weightSpecs.push(...group.weights);
    for (const p of group.paths) buffers.push(fs.readFileSync(path.join(dir, p)));
  }
  const all = Buffer.concat(buffers);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  const handler = {
    load: async () => ({
      modelTopology: model.modelTopology, weightSpecs, weightData, format: model.format,
      generatedBy: model.generatedBy, convertedBy: model.convertedBy, signature: model.signature,
      userDefinedMetadata: model.userDefinedMetadata,
    }),
  };
  await tf.setBackend('cpu');
  const graph = await tf.loadGraphModel(handler);
  const raw = fs.readFileSync(imagesPath);
  const pixels = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
  const input = tf.tensor4d(pixels, [Number(n), Number(h), Number(w), Number(c)]);
  const names = graph.outputs.map((o) => o.name);
  let outs = graph.execute(input, names);
  if (!Array.isArray(outs)) outs = [outs];
  const result = {};
  names.forEach((name, i) => { result[name] = { shape: outs[i].shape, data: Array.from(outs[i].dataSync()) }; });
  result.__backend__ = tf.getBackend();
  result.__tfjs_version__ = tf.version.tfjs;
  fs.writeFileSync(outPath, JSON.stringify(result));
}

main().catch((e) => { console.error(e); process.exit(1); });
