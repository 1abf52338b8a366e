(gd, k) => {
  // Show step k of a dualview selection animation (dualview.figures.maps.selection_animation):
  // the steps live in the figure's layout.meta.dv_anim; one Plotly.react redraws the changed traces.
  const anim = gd && gd.layout && gd.layout.meta && gd.layout.meta.dv_anim;
  if (!anim || !window.Plotly) return false;
  const steps = anim.steps, traces = anim.traces;
  k = Math.max(0, Math.min(steps.length - 1, Math.round(Number(k) || 0)));
  const s = steps[k];
  traces.kept.forEach((i) => { gd.data[i].colorscale = s.scale; });
  if (s.z) traces.remaining.forEach((i, p) => { gd.data[i].z = s.z[p]; gd.data[i].zmax = s.zmax; });
  gd.layout.title = Object.assign({}, gd.layout.title, {text: s.title});
  if (gd.layout.sliders && gd.layout.sliders.length) gd.layout.sliders[0].active = k;
  gd.layout.datarevision = (gd.layout.datarevision || 0) + 1;
  window.Plotly.react(gd, gd.data, gd.layout);
  return true;
}
