// A small time-series chart (uPlot: a few kB, fast, no framework of its own).
import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

export function Chart({ title, series, data, height = 160 }) {
  const box = useRef(null);
  const plot = useRef(null);
  useEffect(() => {
    const options = {
      title,
      width: box.current.clientWidth || 480,
      height,
      series: [{}, ...series.map((s) => ({ label: s.label, stroke: s.color, width: 2 }))],
      axes: [{}, { size: 60 }],
    };
    plot.current = new uPlot(options, data, box.current);
    return () => plot.current.destroy();
  }, [title, series.length]);
  useEffect(() => {
    if (plot.current) plot.current.setData(data);
  }, [data]);
  return <div class="chart" ref={box} />;
}
