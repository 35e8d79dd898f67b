// llama-adapter: the public API.
export { native } from './native';
export type { Tensor, DType, QuantDType, Device, Capabilities, FileMapping, ModelHandle, ModelWeights, DecoderShape, DecoderWeights, LayerPrompt } from './native';
export { defaultDevice, resolveDevice } from './device';
export { Llama, KVCache } from './model/llama';
export { loadCheckpoint } from './model/load';
export { readGgufHeader, ggufConfig } from './model/gguf';
export type { GgufHeader, GgufTensorInfo, GgufValue } from './model/gguf';
export type { LlamaConfig, RopeLayout } from './model/config';
export type { Checkpoint, LlamaWeights, LayerWeights, LoadOptions } from './model/weights';
export { loadTokenizer, StreamDecoder, BpeTokenizer } from './tokenizer';
export type { Tokenizer } from './tokenizer';
export { generate, generateTokens } from './generate/generate';
export type { GenerateOptions } from './generate/generate';
export { Sampler, argmax } from './generate/sampler';
export type { SamplerOptions } from './generate/sampler';
export { Random } from './generate/random';
export { Adapter, defaultAdapterConfig } from './model/adapter';
export type { AdapterConfig, AdapterValues, GateMode } from './model/adapter';
export { Trainer, evaluateLoss } from './train/trainer';
export type { StepMetrics, EvalResult, TrainResult } from './train/trainer';
export { resolveTrainConfig, trainDefaults } from './train/config';
export type { TrainConfig } from './train/config';
export { AdapterGraph, AdapterGrads } from './train/graph';
export type { PackedBatch } from './train/graph';
export { AdamW } from './train/optimizer';
export { learningRate, peakFromBase } from './train/schedule';
export { loadAlpaca, promptOf, tokenizeExample, tokenizeRecords, Batcher } from './data/alpaca';
export type { AlpacaRecord, Example, Batch } from './data/alpaca';
export { initWorld, currentWorld, World } from './train/distributed';
export type { WorldOptions } from './train/distributed';
// --- mm-data: image features files, datasets with images, evaluation metrics ---
export { FeaturesFile, FeaturesWriter, openFeatures, writeFeatures } from './data/features';
export type { FeaturesInfo, FeaturesWriterOptions } from './data/features';
// --- vision: image input and image encoders (SPEC §7, §9) ---
export { ImageEncoder } from './encoder/encoder';
export type { ImageEncoderOptions, EmbedOptions, ImageInput, EncoderPrompts } from './encoder/encoder';
export type { EncoderConfig, EncoderWeights, EncoderLayerWeights } from './encoder/config';
export { decodeImage, preprocessImage, readPreprocessConfig, defaultPreprocess } from './image';
export type { RgbImage, PreprocessConfig } from './image';
export { EncoderGraph } from './encoder/train';
// --- classify: zero-init gated prompts + a linear head for image classification (SPEC §9) ---
export { Classifier, headForward, headBackward } from './model/classifier';
export type { ClassifierConfig, ClassifierValues, EncoderDims } from './model/classifier';
export { ClassifyTrainer, classifyLogits, scoreImages, openClassifier, topK } from './tasks/classify';
export type { ClassifyStepMetrics, ClassifyEval, ClassifyTrainResult } from './tasks/classify';
export { ClassifyEncoder } from './tasks/classify-encoder';
export { loadClassifyData } from './data/classify';
export type { ClassifyData, LabeledImage } from './data/classify';
export { loadDataset, checkImages, defaultImageRoot, DATA_FORMATS } from './data/dataset';
export type { Dataset, DataFormat, ImageSource, LoadDatasetOptions, CheckImagesOptions } from './data/dataset';
export { loadScienceQA, scienceqaInstruction, scienceqaOutput } from './data/scienceqa';
export type { ScienceQAProblem } from './data/scienceqa';
export { loadCoco, COCO_INSTRUCTION } from './data/coco';
export { evaluateGenerative, GENERATIVE_METRICS } from './eval/evaluate';
export type { GenerateFn, GenerativeMetric, EvaluateResult, Prediction } from './eval/evaluate';
export { exactMatch, exactAccuracy } from './eval/exact';
export { extractChoice, choiceAccuracy } from './eval/choice';
export { scienceqaTable, scienceqaGroups, SCIENCEQA_COLUMNS } from './eval/scienceqa';
export { tokenizeCaption, bleu, ciderD, captionScores } from './eval/caption';
// --- end mm-data ---
// --- mm-train: the image-conditioned adapter (SPEC §8) ---
export { ImagePromptStep } from './model/image-prompts';
export type { GateInit, ImageProjConfig, ImageProjTensors } from './model/adapter';
export { FeaturesFileSource, EncoderSource, projConfigFor, parseFeatureLayers } from './train/image-features';
export type { ImageFeatureSource } from './train/image-features';
export { imagePromptsFor, openImageSource } from './train/trainer';
// --- end mm-train ---
// --- roberta: text encoders (BERT/RoBERTa), their tokenizers, extractive QA (SPEC §9) ---
export { TextEncoderModel, TextEncoderGraph, TextBatchIndex, spanLogits } from './text/encoder';
export type { TextBatch, TextEncoderOptions } from './text/encoder';
export type { TextEncoderConfig, TextEncoderWeights } from './text/config';
export { loadTextTokenizer, ByteBpeTokenizer, WordPieceTokenizer } from './text/tokenizer';
export type { TextTokenizer, Encoding } from './text/tokenizer';
export { loadSquad } from './data/squad';
export type { SquadData, SquadExample } from './data/squad';
export { squadMetrics, normalizeAnswer, exactMatchScore, f1Score } from './eval/squad';
export { trainSquad, evaluateSquad, decodeAnswer, makeFeatures, loadSquadAdapter, saveSquadAdapter } from './tasks/squad';
// --- end roberta ---
