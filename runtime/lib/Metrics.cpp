//===- Metrics.cpp - training metrics log, plot and progress line ---------===//

#include "moec/Runtime/Metrics.h"

#include "Format.h"
#include "JsonCheck.h"
#include "moec/Runtime/FileUtil.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <fcntl.h>
#include <limits>
#include <sys/stat.h>
#include <unistd.h>

namespace moec::rt {

using ordered_json = nlohmann::ordered_json;

//===----------------------------------------------------------------------===//
// Records
//===----------------------------------------------------------------------===//

std::string formatMetricRecord(const MetricRecord &record) {
  ordered_json object = ordered_json::object();
  object["step"] = record.step;
  object["epoch"] = record.epoch;
  // nlohmann writes NaN and infinities as null.
  if (record.loss)
    object["loss"] = *record.loss;
  if (record.lr)
    object["lr"] = *record.lr;
  if (record.imagesPerSec)
    object["images_per_s"] = *record.imagesPerSec;
  if (record.top1)
    object["top1"] = *record.top1;
  for (const auto &[key, value] : record.extra)
    if (!object.contains(key) && key != "split")
      object[key] = value;
  object["split"] = record.split;
  return object.dump(-1, ' ', false, ordered_json::error_handler_t::replace);
}

Expected<MetricRecord> parseMetricRecord(const std::string &line,
                                         const std::string &where) {
  nlohmann::json object;
  if (Error e = parseJson(line.data(), line.data() + line.size(), where,
                          ErrorCode::Data, object))
    return e;
  auto fail = [&](const auto &...args) {
    return makeError(ErrorCode::Data, where, ": ", args...);
  };
  if (!object.is_object())
    return fail("not a JSON object");
  MetricRecord record;
  auto integer = [&](const char *key, int64_t &out) -> Error {
    auto it = object.find(key);
    if (it == object.end())
      return fail("missing \"", key, "\"");
    if (!it->is_number_integer())
      return fail("\"", key, "\" is not an integer");
    out = it->get<int64_t>();
    return Error::success();
  };
  if (Error e = integer("step", record.step))
    return e;
  if (Error e = integer("epoch", record.epoch))
    return e;
  auto split = object.find("split");
  if (split == object.end() || !split->is_string())
    return fail("missing \"split\" string");
  record.split = split->get<std::string>();
  for (const auto &[key, value] : object.items()) {
    if (key == "step" || key == "epoch" || key == "split")
      continue;
    if (!value.is_number() && !value.is_null())
      continue;
    double number = value.is_null() ? std::numeric_limits<double>::quiet_NaN()
                                    : value.get<double>();
    if (key == "loss")
      record.loss = number;
    else if (key == "lr")
      record.lr = number;
    else if (key == "images_per_s")
      record.imagesPerSec = number;
    else if (key == "top1")
      record.top1 = number;
    else
      record.extra[key] = number;
  }
  return record;
}

//===----------------------------------------------------------------------===//
// MetricsLog
//===----------------------------------------------------------------------===//

/// Cuts `fd` (of `path`) after its last newline when its last byte is not
/// one: the remains of a line whose write was interrupted.
static Error dropIncompleteLine(int fd, const std::string &path) {
  struct stat st;
  if (::fstat(fd, &st) != 0)
    return makeError(ErrorCode::Io, path,
                     ": cannot stat: ", systemError(errno));
  if (st.st_size == 0)
    return Error::success();
  char last;
  if (::pread(fd, &last, 1, st.st_size - 1) != 1)
    return makeError(ErrorCode::Io, path,
                     ": read failed: ", systemError(errno));
  if (last == '\n')
    return Error::success();
  off_t keep = 0;
  char buffer[4096];
  for (off_t end = st.st_size; end > 0 && keep == 0;) {
    off_t begin = std::max<off_t>(0, end - off_t(sizeof(buffer)));
    ssize_t got = ::pread(fd, buffer, size_t(end - begin), begin);
    if (got != end - begin)
      return makeError(ErrorCode::Io, path,
                       ": read failed: ", systemError(errno));
    for (ssize_t i = got - 1; i >= 0; --i)
      if (buffer[i] == '\n') {
        keep = begin + i + 1;
        break;
      }
    end = begin;
  }
  if (::ftruncate(fd, keep) != 0)
    return makeError(ErrorCode::Io, path,
                     ": cannot truncate: ", systemError(errno));
  return Error::success();
}

Expected<MetricsLog> MetricsLog::open(const std::string &path, bool truncate) {
  int flags =
      O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC | (truncate ? O_TRUNC : 0);
  int fd = ::open(path.c_str(), flags, 0666);
  if (fd < 0)
    return makeError(ErrorCode::Io, path,
                     ": cannot open: ", systemError(errno));
  if (Error e = dropIncompleteLine(fd, path)) {
    ::close(fd);
    return e;
  }
  return MetricsLog(path, fd);
}

MetricsLog::MetricsLog(MetricsLog &&other) noexcept
    : path_(std::move(other.path_)), fd_(other.fd_) {
  other.fd_ = -1;
}

MetricsLog::~MetricsLog() {
  if (fd_ >= 0)
    ::close(fd_);
}

Error MetricsLog::append(const MetricRecord &record) {
  if (fd_ < 0)
    return makeError(ErrorCode::Internal, path_, ": the log is not open");
  std::string line = formatMetricRecord(record) + "\n";
  const char *bytes = line.data();
  size_t size = line.size();
  while (size > 0) {
    ssize_t put = ::write(fd_, bytes, size);
    if (put < 0) {
      if (errno == EINTR)
        continue;
      return makeError(ErrorCode::Io, path_,
                       ": write failed: ", systemError(errno));
    }
    bytes += put;
    size -= size_t(put);
  }
  return Error::success();
}

/// Calls `each(line, lineNumber, terminated)` for every non-blank line.
template <typename Fn>
static Error forEachLine(const std::vector<uint8_t> &bytes, Fn each) {
  size_t begin = 0;
  int64_t number = 0;
  while (begin < bytes.size()) {
    ++number;
    size_t end = begin;
    while (end < bytes.size() && bytes[end] != '\n')
      ++end;
    std::string line(bytes.begin() + begin, bytes.begin() + end);
    bool terminated = end < bytes.size();
    if (line.find_first_not_of(" \t\r") != std::string::npos)
      if (Error e = each(line, number, terminated))
        return e;
    begin = end + 1;
  }
  return Error::success();
}

Expected<std::vector<MetricRecord>> readMetricsLog(const std::string &path) {
  Expected<std::vector<uint8_t>> bytes = readFile(path);
  if (!bytes)
    return bytes.takeError();
  std::vector<MetricRecord> records;
  Error error = forEachLine(
      *bytes,
      [&](const std::string &line, int64_t number, bool terminated) -> Error {
        Expected<MetricRecord> record =
            parseMetricRecord(line, cat(path, ":", number));
        if (!record)
          return terminated ? record.takeError() : Error::success();
        records.push_back(std::move(*record));
        return Error::success();
      });
  if (error)
    return error;
  return records;
}

Error truncateMetricsLog(const std::string &path, int64_t lastStep) {
  if (::access(path.c_str(), F_OK) != 0 && errno == ENOENT)
    return Error::success();
  Expected<std::vector<uint8_t>> bytes = readFile(path);
  if (!bytes)
    return bytes.takeError();
  std::string kept;
  Error error = forEachLine(
      *bytes,
      [&](const std::string &line, int64_t number, bool terminated) -> Error {
        if (!terminated)
          return Error::success();
        Expected<MetricRecord> record =
            parseMetricRecord(line, cat(path, ":", number));
        if (!record)
          return record.takeError();
        if (record->step <= lastStep)
          kept += line + "\n";
        return Error::success();
      });
  if (error)
    return error;
  return writeFileAtomic(path, kept.data(), kept.size());
}

//===----------------------------------------------------------------------===//
// The SVG plot
//===----------------------------------------------------------------------===//

namespace {

struct Axis {
  double lo = 0, hi = 1, step = 1;
  int decimals = 0;
};

/// Round ticks (1, 2 or 5 times a power of ten) covering [lo, hi].
Axis niceAxis(double lo, double hi, bool integer) {
  if (!(hi > lo)) {
    double pad = integer ? 1 : (lo != 0 ? std::fabs(lo) * 0.1 : 0.1);
    lo -= pad;
    hi += pad;
  }
  double raw = (hi - lo) / 5;
  double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  double norm = raw / magnitude;
  double step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * magnitude;
  if (integer && step < 1)
    step = 1;
  Axis axis;
  axis.step = step;
  axis.lo = std::floor(lo / step + 1e-9) * step;
  axis.hi = std::ceil(hi / step - 1e-9) * step;
  axis.decimals =
      step >= 1 ? 0 : std::min(10, int(std::ceil(-std::log10(step) - 1e-9)));
  return axis;
}

std::string number(double value, int decimals) {
  char buffer[64];
  if (std::fabs(value) < 1e-12)
    value = 0; // no "-0"
  std::snprintf(buffer, sizeof(buffer), "%.*f", decimals, value);
  return buffer;
}

std::string coord(double value) { return number(value, 2); }

struct Panel {
  std::string id, title, xLabel, yLabel, color;
  std::vector<std::pair<double, double>> points;
  bool xInteger = true;
  /// Limits the y axis to [yMin, yMax].
  double yMin = -std::numeric_limits<double>::infinity();
  double yMax = std::numeric_limits<double>::infinity();
  /// Start the y axis at 0 when all values are positive.
  bool yFromZero = false;
  bool markers = false;
};

constexpr double kPanelWidth = 480, kPanelHeight = 400;
constexpr size_t kMaxPoints = 2000;

void drawPanel(std::string &out, const Panel &panel, double x0) {
  const double left = x0 + 70, right = x0 + kPanelWidth - 20;
  const double top = 40, bottom = kPanelHeight - 50;
  out += cat("<g id=\"", panel.id, "\">\n");
  out += cat("<text x=\"", coord(x0 + kPanelWidth / 2),
             "\" y=\"24\" "
             "text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">",
             escapeXml(panel.title), "</text>\n");
  out += cat("<rect x=\"", coord(left), "\" y=\"", coord(top), "\" width=\"",
             coord(right - left), "\" height=\"", coord(bottom - top),
             "\" fill=\"none\" stroke=\"#888\"/>\n");
  out += cat("<text x=\"", coord((left + right) / 2), "\" y=\"",
             coord(bottom + 40), "\" text-anchor=\"middle\">",
             escapeXml(panel.xLabel), "</text>\n");
  out += cat("<text transform=\"translate(", coord(x0 + 16), " ",
             coord((top + bottom) / 2),
             ") rotate(-90)\" "
             "text-anchor=\"middle\">",
             escapeXml(panel.yLabel), "</text>\n");
  if (panel.points.empty()) {
    out += cat("<text x=\"", coord((left + right) / 2), "\" y=\"",
               coord((top + bottom) / 2),
               "\" text-anchor=\"middle\" "
               "fill=\"#888\">no data</text>\n</g>\n");
    return;
  }

  double xLo = panel.points.front().first, xHi = xLo;
  double yLo = panel.points.front().second, yHi = yLo;
  for (const auto &[x, y] : panel.points) {
    xLo = std::min(xLo, x);
    xHi = std::max(xHi, x);
    yLo = std::min(yLo, y);
    yHi = std::max(yHi, y);
  }
  xLo = std::min(xLo, 0.0);
  if (panel.yFromZero && yLo > 0)
    yLo = 0;
  Axis xAxis = niceAxis(xLo, xHi, panel.xInteger);
  Axis yAxis = niceAxis(yLo, yHi, false);
  yAxis.lo = std::max(yAxis.lo, panel.yMin);
  yAxis.hi = std::min(yAxis.hi, panel.yMax);
  if (!(yAxis.hi > yAxis.lo))
    yAxis = niceAxis(yLo, yHi, false);
  if (!std::isfinite(xAxis.hi - xAxis.lo) ||
      !std::isfinite(yAxis.hi - yAxis.lo)) {
    out += cat("<text x=\"", coord((left + right) / 2), "\" y=\"",
               coord((top + bottom) / 2),
               "\" text-anchor=\"middle\" "
               "fill=\"#888\">values out of range</text>\n</g>\n");
    return;
  }
  auto px = [&](double x) {
    return left + (x - xAxis.lo) / (xAxis.hi - xAxis.lo) * (right - left);
  };
  auto py = [&](double y) {
    return bottom - (y - yAxis.lo) / (yAxis.hi - yAxis.lo) * (bottom - top);
  };

  for (int i = 0;; ++i) {
    double x = xAxis.lo + i * xAxis.step;
    if (x > xAxis.hi + xAxis.step * 1e-6 || i > 100)
      break;
    std::string sx = coord(px(x));
    out += cat("<line x1=\"", sx, "\" y1=\"", coord(top), "\" x2=\"", sx,
               "\" y2=\"", coord(bottom), "\" stroke=\"#eee\"/>\n");
    out += cat("<line x1=\"", sx, "\" y1=\"", coord(bottom), "\" x2=\"", sx,
               "\" y2=\"", coord(bottom + 5), "\" stroke=\"#444\"/>\n");
    out += cat("<text x=\"", sx, "\" y=\"", coord(bottom + 19),
               "\" text-anchor=\"middle\">", number(x, xAxis.decimals),
               "</text>\n");
  }
  for (int i = 0;; ++i) {
    double y = yAxis.lo + i * yAxis.step;
    if (y > yAxis.hi + yAxis.step * 1e-6 || i > 100)
      break;
    std::string sy = coord(py(y));
    out += cat("<line x1=\"", coord(left), "\" y1=\"", sy, "\" x2=\"",
               coord(right), "\" y2=\"", sy, "\" stroke=\"#eee\"/>\n");
    out += cat("<line x1=\"", coord(left - 5), "\" y1=\"", sy, "\" x2=\"",
               coord(left), "\" y2=\"", sy, "\" stroke=\"#444\"/>\n");
    out +=
        cat("<text x=\"", coord(left - 8), "\" y=\"", coord(py(y) + 4),
            "\" text-anchor=\"end\">", number(y, yAxis.decimals), "</text>\n");
  }

  // Long runs: every k-th point and the last one.
  size_t stride = (panel.points.size() + kMaxPoints - 1) / kMaxPoints;
  std::string polyline;
  for (size_t i = 0; i < panel.points.size(); ++i) {
    if (i % stride != 0 && i + 1 != panel.points.size())
      continue;
    const auto &[x, y] = panel.points[i];
    polyline +=
        cat(polyline.empty() ? "" : " ", coord(px(x)), ",", coord(py(y)));
  }
  out += cat("<polyline fill=\"none\" stroke=\"", panel.color,
             "\" stroke-width=\"1.5\" points=\"", polyline, "\"/>\n");
  if (panel.markers)
    for (const auto &[x, y] : panel.points)
      out += cat("<circle cx=\"", coord(px(x)), "\" cy=\"", coord(py(y)),
                 "\" r=\"3\" fill=\"", panel.color, "\"/>\n");
  out += "</g>\n";
}

} // namespace

std::string lossPlotSvg(const std::vector<MetricRecord> &records) {
  Panel loss;
  loss.id = "train-loss";
  loss.title = "Training loss";
  loss.xLabel = "step";
  loss.yLabel = "loss";
  loss.color = "#1f77b4";
  loss.yFromZero = true;
  Panel top1;
  top1.id = "eval-top1";
  top1.title = "Eval top-1 accuracy";
  top1.xLabel = "epoch";
  top1.yLabel = "top-1 accuracy (%)";
  top1.color = "#d62728";
  top1.yMin = 0;
  top1.yMax = 100;
  top1.markers = true;
  for (const MetricRecord &r : records) {
    if (r.split == "train" && r.loss && std::isfinite(*r.loss))
      loss.points.emplace_back(double(r.step), *r.loss);
    if (r.split == "eval" && r.top1 && std::isfinite(*r.top1))
      top1.points.emplace_back(double(r.epoch), *r.top1 * 100);
  }
  auto byX = [](const std::pair<double, double> &a,
                const std::pair<double, double> &b) {
    return a.first < b.first;
  };
  std::stable_sort(loss.points.begin(), loss.points.end(), byX);
  std::stable_sort(top1.points.begin(), top1.points.end(), byX);

  std::string out = cat("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"",
                        2 * kPanelWidth, "\" height=\"", kPanelHeight,
                        "\" viewBox=\"0 0 ", 2 * kPanelWidth, " ", kPanelHeight,
                        "\" font-family=\"sans-serif\" font-size=\"12\">\n");
  out += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  drawPanel(out, loss, 0);
  drawPanel(out, top1, kPanelWidth);
  out += "</svg>\n";
  return out;
}

Error writeLossPlotSvg(const std::vector<MetricRecord> &records,
                       const std::string &path) {
  std::string svg = lossPlotSvg(records);
  return writeFileAtomic(path, svg.data(), svg.size());
}

//===----------------------------------------------------------------------===//
// Progress line
//===----------------------------------------------------------------------===//

std::string formatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0 || seconds > 1e9)
    return "--:--";
  int64_t total = std::llround(seconds);
  int64_t hours = total / 3600, minutes = total / 60 % 60, secs = total % 60;
  char buffer[64];
  if (hours > 0)
    std::snprintf(buffer, sizeof(buffer), "%lld:%02lld:%02lld",
                  (long long)hours, (long long)minutes, (long long)secs);
  else
    std::snprintf(buffer, sizeof(buffer), "%lld:%02lld", (long long)minutes,
                  (long long)secs);
  return buffer;
}

double trainEtaSeconds(double secondsPerStep, int64_t done, int64_t total,
                       int64_t maxSteps) {
  const int64_t end = maxSteps > 0 ? std::min(total, maxSteps) : total;
  return secondsPerStep * double(std::max<int64_t>(end - done, 0));
}

std::string formatProgress(int64_t epoch, int64_t epochs, int64_t done,
                           int64_t total, double loss, double imagesPerSec,
                           double etaSeconds, int barWidth) {
  barWidth = std::max(barWidth, 1);
  int filled = 0;
  if (total > 0) {
    int64_t clamped = std::clamp<int64_t>(done, 0, total);
    filled = int(double(clamped) / double(total) * barWidth);
  }
  std::string bar(size_t(filled), '#');
  bar.resize(size_t(barWidth), '.');
  char numbers[128];
  std::snprintf(numbers, sizeof(numbers), "loss %.4f %.0f img/s",
                std::isnan(loss) ? std::fabs(loss) : loss,
                std::isfinite(imagesPerSec) ? imagesPerSec : 0.0);
  return cat("epoch ", epoch, "/", epochs, " [", bar, "] ", done, "/", total,
             " ", numbers, " ETA ", formatDuration(etaSeconds));
}

} // namespace moec::rt
