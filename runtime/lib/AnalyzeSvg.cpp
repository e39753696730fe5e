//===- AnalyzeSvg.cpp - pictures of a routing profile ---------------------===//
//
// Plain SVG 1.1 (no scripts, no external fonts), so that a browser, an
// image viewer or ImageMagick shows it as is.
//
//===----------------------------------------------------------------------===//

#include "moec/Runtime/Analyze.h"

#include "Format.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace moec::rt {

namespace {

std::string fmt(const char *format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

std::string text(double x, double y, const std::string &body,
                 const char *anchor = "start", int size = 12,
                 const char *fill = "#222", const char *weight = "normal") {
  return "<text x=\"" + fmt("%.1f", x) + "\" y=\"" + fmt("%.1f", y) +
         "\" font-size=\"" + std::to_string(size) + "\" text-anchor=\"" +
         anchor + "\" fill=\"" + fill + "\" font-weight=\"" + weight + "\">" +
         escapeXml(body) + "</text>\n";
}

std::string rect(double x, double y, double w, double h, const std::string &fill,
                 const char *stroke = "none") {
  return "<rect x=\"" + fmt("%.1f", x) + "\" y=\"" + fmt("%.1f", y) +
         "\" width=\"" + fmt("%.1f", w) + "\" height=\"" + fmt("%.1f", h) +
         "\" fill=\"" + fill + "\" stroke=\"" + stroke + "\"/>\n";
}

std::string rgb(double r, double g, double b) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "#%02x%02x%02x", int(std::lround(r)),
                int(std::lround(g)), int(std::lround(b)));
  return buf;
}

/// White at the even share 1/E, towards blue above it, towards orange
/// below it.
std::string shareColor(double share, double even) {
  if (share >= even) {
    double t = even < 1 ? std::min(1.0, (share - even) / (1 - even)) : 0;
    t = std::sqrt(t);
    return rgb(255 - t * (255 - 33), 255 - t * (255 - 102), 255 - t * (255 - 172));
  }
  double t = std::min(1.0, (even - share) / even);
  t = std::sqrt(t);
  return rgb(255 - t * (255 - 230), 255 - t * (255 - 145), 255 - t * (255 - 56));
}

std::string className(const RoutingProfile &p, size_t c) {
  return c < p.classNames.size() ? p.classNames[c] : "class " + std::to_string(c);
}

std::string svgOpen(double w, double h) {
  return "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" +
         fmt("%.0f", w) + "\" height=\"" + fmt("%.0f", h) +
         "\" viewBox=\"0 0 " + fmt("%.0f", w) + " " + fmt("%.0f", h) +
         "\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n" +
         rect(0, 0, w, h, "#ffffff");
}

/// One heatmap: rows classes, columns experts, each cell the share of the
/// row's total in that column; white where it equals the column's share
/// of everything.
std::string heatmap(const RoutingProfile &p,
                    const std::vector<std::vector<double>> &counts, double x,
                    double y, double cellW, double cellH) {
  const size_t k = counts.size(), e = k ? counts[0].size() : 0;
  std::vector<double> column(e, 0.0);
  double total = 0;
  for (const auto &row : counts)
    for (size_t j = 0; j < e; ++j) {
      column[j] += row[j];
      total += row[j];
    }
  std::string out;
  for (size_t c = 0; c < k; ++c) {
    double sum = 0;
    for (double v : counts[c])
      sum += v;
    const double cy = y + cellH * double(c);
    out += text(x - 6, cy + cellH * 0.68, className(p, c), "end", 11);
    for (size_t j = 0; j < e; ++j) {
      const double share = sum > 0 ? counts[c][j] / sum : 0;
      const double even = total > 0 ? column[j] / total : 0;
      out += rect(x + cellW * double(j), cy, cellW, cellH,
                  even > 0 ? shareColor(share, even) : "#eeeeee", "#ffffff");
      const bool dark = even > 0 && share > even + 0.5 * (1 - even);
      out += text(x + cellW * (double(j) + 0.5), cy + cellH * 0.68,
                  fmt("%.0f%%", 100 * share), "middle", 10,
                  dark ? "#ffffff" : "#333");
    }
  }
  const double axis = y + cellH * double(k) + 14;
  for (size_t j = 0; j < e; ++j)
    out += text(x + cellW * (double(j) + 0.5), axis, "e" + std::to_string(j),
                "middle", 11, "#333");
  out += text(x + cellW * double(e) / 2, axis + 14,
              total > 0 ? "all classes: " + [&] {
                std::string shares;
                for (size_t j = 0; j < e; ++j)
                  shares += (j ? " " : "") + fmt("%.0f", 100 * column[j] / total);
                return shares + " %";
              }()
                        : std::string("no routed tokens"),
              "middle", 10, "#555");
  return out;
}

} // namespace

std::string heatmapsSvg(const RoutingProfile &p) {
  const double label = 112, cellW = 44, cellH = 20, gap = 30;
  size_t classes = 0;
  for (const LayerProfile &l : p.layers)
    classes = std::max(classes, l.classTokens.size());
  std::vector<double> x0;
  double width = 16;
  for (const LayerProfile &l : p.layers) {
    x0.push_back(width + label);
    width += label + cellW * double(l.experts) + gap;
  }
  width = std::max(width, 620.0);
  const double block = cellH * double(classes) + 60;
  const double top1 = 92, top2 = top1 + block + 36;
  const double height = top2 + block + 30;
  std::string out = svgOpen(width, height);
  out += text(16, 22, p.model, "start", 15, "#111", "bold");
  out += text(16, 38,
              "Per MoE layer, " + std::to_string(p.images) + " " + p.split +
                  " images. White: the expert's share over all classes; "
                  "blue: the class uses it more; orange: less.",
              "start", 11, "#555");
  out += text(16, top1 - 30, "Tokens: share of each class's routed tokens "
                             "per expert",
              "start", 12, "#111", "bold");
  out += text(16, top2 - 30, "Images: share of each class's images whose "
                             "tokens go most to each expert",
              "start", 12, "#111", "bold");
  for (size_t li = 0; li < p.layers.size(); ++li) {
    const LayerProfile &l = p.layers[li];
    const double x = x0[li], mid = x + cellW * double(l.experts) / 2;
    out += text(mid, top1 - 10, l.name + "  (token NMI " +
                                    fmt("%.3f", l.tokenNmi) + ")",
                "middle", 11, "#111", "bold");
    out += heatmap(p, l.classTokens, x, top1, cellW, cellH);
    out += text(mid, top2 - 10, l.name + "  (image NMI " +
                                    fmt("%.3f", l.imageNmi) + ")",
                "middle", 11, "#111", "bold");
    out += heatmap(p, l.classDominant, x, top2, cellW, cellH);
  }
  out += "</svg>\n";
  return out;
}

std::string specialisationSvg(const RoutingProfile &p, double threshold) {
  const double left = 130, barMax = 300, rowH = 34, top = 70;
  const double details = left + barMax + 150;
  double scale = threshold * 1.5;
  for (const LayerProfile &l : p.layers)
    scale = std::max(scale, l.imageNmi * 1.15);
  scale = std::max(scale, 1e-3);
  const double width = details + 380;
  const double height = top + rowH * double(p.layers.size()) + 56;
  std::string out = svgOpen(width, height);
  out += text(16, 24,
              p.model + ": does each MoE layer's routing depend on the class?",
              "start", 15, "#111", "bold");
  out += text(16, 44,
              "Bar: normalised mutual information (NMI) between an image's "
              "class and the expert most of its tokens go to.",
              "start", 11, "#555");
  out += text(details, top - 8, "token NMI, routing degree (even 1/E), "
                                "entropy, experts per image",
              "start", 10, "#555", "bold");
  for (size_t i = 0; i < p.layers.size(); ++i) {
    const LayerProfile &l = p.layers[i];
    const double y = top + rowH * double(i);
    const bool kept = l.imageNmi >= threshold;
    out += text(left - 10, y + 20, l.name, "end", 12, "#111", "bold");
    out += rect(left, y + 6, barMax * l.imageNmi / scale, 20,
                kept ? "#2166ac" : "#b0b0b0");
    // Right of the bar, and of the threshold line when the bar stops short.
    out += text(std::max(barMax * l.imageNmi / scale,
                         barMax * threshold / scale) +
                    left + 6,
                y + 21,
                fmt("%.3f", l.imageNmi) +
                    (kept ? " specialises" : " does not"),
                "start", 11, kept ? "#2166ac" : "#666");
    out += text(details, y + 21,
                fmt("%.4f", l.tokenNmi) + ",  " +
                    fmt("%.2f", l.routingDegree) + " (" +
                    fmt("%.2f", 1.0 / double(l.experts)) + "),  " +
                    fmt("%.2f", l.routingEntropy) + ",  " +
                    fmt("%.2f", l.expertsPerImage),
                "start", 10, "#555");
  }
  const double tx = left + barMax * threshold / scale;
  const double bottom = top + rowH * double(p.layers.size());
  out += "<line x1=\"" + fmt("%.1f", tx) + "\" y1=\"" + fmt("%.1f", top - 4) +
         "\" x2=\"" + fmt("%.1f", tx) + "\" y2=\"" + fmt("%.1f", bottom) +
         "\" stroke=\"#d6604d\" stroke-width=\"1.5\" stroke-dasharray=\"5,4\"/>\n";
  out += text(tx, bottom + 16, "threshold " + fmt("%.3f", threshold), "middle",
              11, "#d6604d");
  out += text(16, height - 12,
              "Layers below the threshold are the ones moe-prune-layers "
              "replaces by a dense FFN.",
              "start", 11, "#555");
  out += "</svg>\n";
  return out;
}

} // namespace moec::rt
