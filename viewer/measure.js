// Distance and angle measurements: points in image pixels, lengths in mm from the image's pixel spacing.
import { number, t } from './i18n.js';

// Pixel Spacing (0028,0030) is the patient-plane spacing; Imager Pixel Spacing (0018,1164) is at the detector,
// so a projection image's length is overstated by the magnification: "approximate". Neither: pixels.
export function spacingOf(item) {
  for (const [tag, approximate] of [['00280030', false], ['00181164', true]]) {
    const v = item?.[tag]?.Value;
    if (v && v.length >= 2 && Number(v[0]) > 0 && Number(v[1]) > 0) {
      return { row: Number(v[0]), column: Number(v[1]), approximate, unit: 'mm' };
    }
  }
  return { row: 1, column: 1, approximate: true, unit: 'px' };
}

// Spacing is [between rows, between columns]: x (a column step) scales by the column spacing.
function physical(a, b, spacing) {
  return [(b.x - a.x) * spacing.column, (b.y - a.y) * spacing.row];
}

export function distance(points, spacing) {
  const [dx, dy] = physical(points[0], points[1], spacing);
  return Math.hypot(dx, dy);
}

export function angle(points, spacing) {
  const u = physical(points[1], points[0], spacing), v = physical(points[1], points[2], spacing);
  const cos = (u[0] * v[0] + u[1] * v[1]) / (Math.hypot(...u) * Math.hypot(...v) || 1);
  return (Math.acos(Math.max(-1, Math.min(1, cos))) * 180) / Math.PI;
}

export const POINTS = { distance: 2, angle: 3 };

// What a finished measurement reads: "42,0 mm", "42,0 mm (approximative)", "12,0 px (sans étalonnage)", "90,0°".
export function label(measurement, item) {
  const spacing = spacingOf(item);
  if (measurement.kind === 'angle') return t('measure.angle', { value: number(angle(measurement.points, spacing)) });
  const v = number(distance(measurement.points, spacing));
  if (spacing.unit === 'px') return t('measure.px', { value: v });
  return t(spacing.approximate ? 'measure.approx' : 'measure.mm', { value: v });
}

// Drawn on the visible canvas after the image, `toScreen` mapping image pixels to canvas pixels.
export function draw(ctx, measurements, item, toScreen, ratio) {
  ctx.save();
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.lineWidth = 2 * ratio;
  ctx.font = `${14 * ratio}px system-ui, sans-serif`;
  for (const m of measurements) {
    const pts = m.points.map(toScreen);
    ctx.strokeStyle = ctx.fillStyle = m.done ? '#ffe14d' : '#4dd2ff';
    ctx.beginPath();
    pts.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    ctx.stroke();
    for (const [x, y] of pts) { ctx.beginPath(); ctx.arc(x, y, 3 * ratio, 0, 2 * Math.PI); ctx.fill(); }
    if (m.points.length === POINTS[m.kind]) {
      const [x, y] = pts[m.kind === 'angle' ? 1 : pts.length - 1];
      const text = label(m, item);
      ctx.lineWidth = 3 * ratio;
      ctx.strokeStyle = '#000';
      ctx.strokeText(text, x + 8 * ratio, y - 8 * ratio);
      ctx.fillText(text, x + 8 * ratio, y - 8 * ratio);
    }
  }
  ctx.restore();
}
