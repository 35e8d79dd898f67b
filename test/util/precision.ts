// Runs `fn` under a matmul precision and restores "highest" (the default) after it, pass or fail.
import { native, MatmulPrecision } from '../../lib/native';

export async function withMatmulPrecision<T>(precision: MatmulPrecision, fn: () => Promise<T>): Promise<T> {
  native.setMatmulPrecision(precision);
  try {
    return await fn();
  } finally {
    native.setMatmulPrecision('highest');
  }
}
