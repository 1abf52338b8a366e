() => {
  // Linked hovering between the kept-mask map (#map-kept) and the token-space PCA (#space):
  // hovering a token in one outlines the same token in the other. Both figures carry, in
  // layout.meta, what is needed (dualview/figures: dv_boxes / dv_xref per token on maps, dv_ids
  // per trace and dv_points per token on the PCA). The outline is a plain element laid over the
  // plot at the pixel position plotly's own axes give (gradio does not expose the Plotly API).
  const plotOf = (id) => document.querySelector(`#${id} .js-plotly-plot`);
  const axes = (gd, xref) => {
    const suffix = xref.slice(1);
    return [gd._fullLayout["xaxis" + suffix], gd._fullLayout["yaxis" + suffix]];
  };
  const overlay = (gd, left, top, width, height, round) => {
    let mark = gd.querySelector(":scope > .dv-link");
    if (!mark) {
      mark = document.createElement("div");
      mark.className = "dv-link";
      mark.style.cssText = "position:absolute;pointer-events:none;border:4px solid #00ff66;z-index:1000;box-sizing:border-box";
      if (getComputedStyle(gd).position === "static") gd.style.position = "relative";
      gd.appendChild(mark);
    }
    Object.assign(mark.style, {left: `${left}px`, top: `${top}px`, width: `${width}px`, height: `${height}px`,
                               borderRadius: round ? "50%" : "0", display: "block"});
  };
  const unmark = (gd) => { const mark = gd && gd.querySelector(":scope > .dv-link"); if (mark) mark.style.display = "none"; };
  const tokenOnMap = (gd, pt) => {
    const meta = gd.layout.meta || {};
    const boxes = meta.dv_boxes || [];
    const xref = pt.xaxis ? pt.xaxis._id : "x";
    for (let t = 0; t < boxes.length; t++) {
      const [x0, y0, x1, y1] = boxes[t];
      if (meta.dv_xref[t] === xref && pt.x >= x0 && pt.x < x1 && pt.y >= y0 && pt.y < y1) return t;
    }
    return null;
  };
  const tokenInSpace = (gd, pt) => {
    const ids = (gd.layout.meta || {}).dv_ids || [];
    return ids[pt.curveNumber] ? ids[pt.curveNumber][pt.pointNumber] : null;
  };
  const markMap = (gd, t) => {
    const meta = gd.layout.meta || {};
    if (!meta.dv_boxes || !meta.dv_boxes[t]) return;
    const [x0, y0, x1, y1] = meta.dv_boxes[t];
    const [xa, ya] = axes(gd, meta.dv_xref[t]);
    const left = xa._offset + xa.l2p(x0), right = xa._offset + xa.l2p(x1);
    const top = ya._offset + Math.min(ya.l2p(y0), ya.l2p(y1)), bottom = ya._offset + Math.max(ya.l2p(y0), ya.l2p(y1));
    overlay(gd, left - 3, top - 3, right - left + 6, bottom - top + 6, false);
    gd.dataset.dvLinked = String(t);
  };
  const markSpace = (gd, t) => {
    const points = (gd.layout.meta || {}).dv_points || [];
    if (!points[t]) return;
    const [xa, ya] = axes(gd, "x");
    overlay(gd, xa._offset + xa.l2p(points[t][0]) - 12, ya._offset + ya.l2p(points[t][1]) - 12, 24, 24, true);
    gd.dataset.dvLinked = String(t);
  };
  const handlers = {
    "map-kept": {
      hover: (ev) => { const space = plotOf("space"); const t = tokenOnMap(plotOf("map-kept"), ev.points[0]);
                       if (space && t !== null) markSpace(space, t); },
      unhover: () => unmark(plotOf("space")),
    },
    "space": {
      hover: (ev) => { const map = plotOf("map-kept"); const t = tokenInSpace(plotOf("space"), ev.points[0]);
                       if (map && t !== null && t !== undefined) markMap(map, t); },
      unhover: () => unmark(plotOf("map-kept")),
    },
  };
  setInterval(() => {
    for (const [id, handler] of Object.entries(handlers)) {
      const gd = plotOf(id);
      if (!gd || !gd.on || gd._dvHandler === handler) continue;
      gd._dvHandler = handler;
      gd.on("plotly_hover", handler.hover);
      gd.on("plotly_unhover", handler.unhover);
    }
  }, 500);
}
