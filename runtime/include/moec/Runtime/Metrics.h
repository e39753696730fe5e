//===- Metrics.h - training metrics log, plot and progress line -*- C++ -*-===//
//
// The metrics log is JSON lines: one object per record, appended with one
// write(2) per line (so each line reaches the file as soon as it is
// logged), keys in this order, optional ones only when set:
//
//   {"step":1200,"epoch":3,"loss":0.8123,"lr":0.001,"images_per_s":1520.5,
//    "split":"train"}
//   {"step":1250,"epoch":3,"loss":0.61,"top1":0.8123,"split":"eval"}
//
// top1 is a fraction in [0, 1]; extra numeric fields follow the standard
// ones; a non-finite number is written as null (and read back as NaN).
//
// writeLossPlotSvg draws the log as a self-contained SVG with two panels:
// training loss vs step, and eval top-1 accuracy (percent) vs epoch.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_METRICS_H
#define MOEC_RUNTIME_METRICS_H

#include "moec/Runtime/Error.h"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace moec::rt {

struct MetricRecord {
  int64_t step = 0;
  int64_t epoch = 0;
  /// "train" or "eval" (other names are kept but not plotted).
  std::string split = "train";
  std::optional<double> loss, lr, imagesPerSec, top1;
  /// Further numeric fields, written after the standard ones in key order.
  std::map<std::string, double> extra;
};

/// One JSON object, without the newline.
std::string formatMetricRecord(const MetricRecord &record);
/// Parses one line; Data errors read "WHERE: ...". step, epoch (integers)
/// and split (a string) are required; other numeric or null fields go to
/// the named members or to `extra`; other fields are ignored.
Expected<MetricRecord> parseMetricRecord(const std::string &line,
                                         const std::string &where);

/// An open metrics log. Move-only; closes the file when destroyed.
class MetricsLog {
public:
  /// Opens `path` for appending (creating it), or empties it with
  /// `truncate`. A last line left incomplete by a crash is cut off first.
  static Expected<MetricsLog> open(const std::string &path,
                                   bool truncate = false);
  MetricsLog(MetricsLog &&other) noexcept;
  MetricsLog &operator=(MetricsLog &&) = delete;
  MetricsLog(const MetricsLog &) = delete;
  ~MetricsLog();

  const std::string &path() const { return path_; }
  /// Appends one line.
  Error append(const MetricRecord &record);

private:
  MetricsLog(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::string path_;
  int fd_ = -1;
};

/// Every record of a log; errors name the file and line ("m.jsonl:7: ...").
/// An unparsable last line without a newline (a write cut short) is
/// skipped.
Expected<std::vector<MetricRecord>> readMetricsLog(const std::string &path);

/// Rewrites `path` (atomically) keeping only the records with step <=
/// `lastStep`: for resuming from a checkpoint at that step. A missing file
/// is left missing.
Error truncateMetricsLog(const std::string &path, int64_t lastStep);

/// The plot as SVG text, and written atomically to `path`. Train records
/// with a finite loss and eval records with a finite top1 are drawn; a
/// panel without data says so.
std::string lossPlotSvg(const std::vector<MetricRecord> &records);
Error writeLossPlotSvg(const std::vector<MetricRecord> &records,
                       const std::string &path);

/// "2:31", "1:02:03"; "--:--" for a negative or non-finite time.
std::string formatDuration(double seconds);

/// The ETA of a training run: `secondsPerStep` times the steps left from
/// `done` to `total`, or to `maxSteps` when that limit (> 0) comes first.
double trainEtaSeconds(double secondsPerStep, int64_t done, int64_t total,
                       int64_t maxSteps = 0);

/// "epoch 3/25 [####................] 12800/60000 loss 0.8123 1520 img/s
/// ETA 2:31" (no newline or carriage return).
std::string formatProgress(int64_t epoch, int64_t epochs, int64_t done,
                           int64_t total, double loss, double imagesPerSec,
                           double etaSeconds, int barWidth = 20);

} // namespace moec::rt

#endif // MOEC_RUNTIME_METRICS_H
