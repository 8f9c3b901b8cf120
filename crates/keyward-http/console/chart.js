// A bar chart in SVG, built with DOM calls (no inline style, so the CSP holds).

const SVG = 'http://www.w3.org/2000/svg';

function el(name, attributes) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  return node;
}

/**
 * Bars of `points` (`[{label, value}]`), labelled for screen readers by `title`; the
 * numbers are also in a table beside the chart. Scales to its container's width.
 */
export function barChart(points, title) {
  const width = 640;
  const height = 200;
  const top = 16;
  const bottom = 24;
  const left = 36;
  const max = Math.max(1, ...points.map((p) => p.value));
  const plot = height - top - bottom;
  const step = (width - left) / Math.max(1, points.length);
  const svg = el('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', class: 'chart' });
  const label = el('title', {});
  label.textContent = title;
  svg.append(label);
  for (const fraction of [0, 0.5, 1]) {
    const y = top + plot - plot * fraction;
    svg.append(el('line', { x1: left, x2: width, y1: y, y2: y, class: 'grid' }));
    const tick = el('text', { x: left - 4, y: y + 4, 'text-anchor': 'end', class: 'tick' });
    tick.textContent = String(Math.round(max * fraction));
    svg.append(tick);
  }
  points.forEach((point, i) => {
    const h = (point.value / max) * plot;
    const bar = el('rect', {
      x: left + i * step + step * 0.15,
      y: top + plot - h,
      width: step * 0.7,
      height: Math.max(h, 0),
      class: 'bar',
    });
    const tip = el('title', {});
    tip.textContent = `${point.label}: ${point.value}`;
    bar.append(tip);
    svg.append(bar);
    if (points.length <= 12 || i % 5 === 0) {
      const text = el('text', {
        x: left + i * step + step / 2,
        y: height - 6,
        'text-anchor': 'middle',
        class: 'tick',
      });
      text.textContent = point.short || point.label;
      svg.append(text);
    }
  });
  return svg;
}
