// Training progress: a bar with ETA, loss, lr and tok/s on a terminal; plain lines otherwise
// (`step 12/100 | loss 2.3104 | norm 0.8123 | lr 1.20e-3 | 350 ms | 4213 tok/s`).
import { EventEmitter } from 'events';
import { EvalResult, StepMetrics } from '../train/trainer';
import type { ClassifyEval, ClassifyStepMetrics } from '../tasks/classify';

function duration(s: number): string {
  if (!Number.isFinite(s)) return '?';
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = Math.floor(s % 60);
  return h ? `${h}h${String(m).padStart(2, '0')}m` : m ? `${m}m${String(sec).padStart(2, '0')}s` : `${sec}s`;
}

/** `trainer`: a Trainer, or a task's trainer with the same events (images/s for classify). */
export function attachProgress(trainer: EventEmitter, out: NodeJS.WriteStream = process.stderr): void {
  const tty = !!out.isTTY;
  const started = Date.now();
  let firstStep: number | undefined;
  let lineOpen = false;
  const endLine = () => {
    if (lineOpen) out.write('\n');
    lineOpen = false;
  };
  trainer.on('log', (msg: string) => {
    endLine();
    out.write(msg + '\n');
  });
  trainer.on('step', (m: StepMetrics | ClassifyStepMetrics) => {
    firstStep ??= m.step - 1;
    const done = m.step - firstStep;
    const elapsed = (Date.now() - started) / 1000;
    const eta = (elapsed / done) * (m.totalSteps - m.step);
    const [count, unit] = 'images' in m ? [m.images, 'img'] : [m.tokens, 'tok'];
    const rate = Math.round((count * 1000) / Math.max(1, m.ms));
    if (tty) {
      const width = 24;
      const filled = Math.round((width * m.step) / m.totalSteps);
      const bar = '#'.repeat(filled) + '.'.repeat(width - filled);
      out.write(
        `\r[${bar}] ${m.step}/${m.totalSteps} ETA ${duration(eta)} | loss ${m.loss.toFixed(4)} | lr ${m.lr.toExponential(2)} | ${rate} ${unit}/s   `,
      );
      lineOpen = true;
      if (m.step === m.totalSteps) endLine();
    } else {
      out.write(
        `step ${m.step}/${m.totalSteps} | epoch ${m.epoch.toFixed(2)} | loss ${m.loss.toFixed(4)} | norm ${m.grad_norm.toFixed(4)} | lr ${m.lr.toExponential(2)} | ${m.ms} ms | ${rate} ${unit}/s\n`,
      );
    }
  });
  trainer.on('eval', (e: EvalResult | ClassifyEval) => {
    endLine();
    if ('accuracy' in e) return void out.write(`eval at step ${e.step}: val loss ${e.loss.toFixed(4)}, accuracy ${(100 * e.accuracy).toFixed(2)}% over ${e.examples} images\n`);
    out.write(`eval at step ${e.step}: val loss ${e.loss.toFixed(4)} over ${e.tokens} tokens\n`);
    if (e.sample) out.write(`  sample: ${JSON.stringify(e.sample.text)}\n`);
  });
  trainer.on('checkpoint', (dir: string) => {
    endLine();
    out.write(`saved ${dir}\n`);
  });
}
