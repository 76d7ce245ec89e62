import { defineConfig } from 'vite';
import preact from '@preact/preset-vite';

// The node serves index.html at / and the bundle under /assets/ (node/src/dashboard.rs).
export default defineConfig({
  plugins: [preact()],
  build: { outDir: 'dist', emptyOutDir: true, chunkSizeWarningLimit: 400 },
});
