"""Word lists and small fact tables behind the synthetic base corpus (see `training.base.corpus`).

Facts are kept consistent (a cow always moos, Paris is always the capital of France) so
the tiny model has something real to learn; the lists are broad so the byte-level BPE
tokenizer reaches its 4096-token vocabulary on English words rather than on noise.
"""

from __future__ import annotations

# animal: (sound or None, home, food, size rank 1-9, legs, young)
ANIMALS = {
    "cat": ("meows", "a house", "fish", 3, 4, "kitten"), "dog": ("barks", "a kennel", "meat", 4, 4, "puppy"),
    "cow": ("moos", "a barn", "grass", 7, 4, "calf"), "horse": ("neighs", "a stable", "hay", 7, 4, "foal"),
    "sheep": ("bleats", "a field", "grass", 5, 4, "lamb"), "goat": ("bleats", "a hill", "leaves", 5, 4, "kid"),
    "pig": ("oinks", "a sty", "corn", 5, 4, "piglet"), "duck": ("quacks", "a pond", "seeds", 2, 2, "duckling"),
    "owl": ("hoots", "a hollow tree", "mice", 2, 2, "owlet"), "wolf": ("howls", "a den", "deer", 5, 4, "pup"),
    "lion": ("roars", "the savanna", "zebras", 7, 4, "cub"), "bee": ("buzzes", "a hive", "nectar", 1, 6, "larva"),
    "frog": ("croaks", "a pond", "flies", 1, 4, "tadpole"), "crow": ("caws", "a tall tree", "seeds", 2, 2, "chick"),
    "mouse": ("squeaks", "a hole in the wall", "cheese", 1, 4, "pup"), "rabbit": (None, "a burrow", "carrots", 2, 4, "kit"),
    "fox": (None, "a den", "rabbits", 3, 4, "kit"), "whale": (None, "the ocean", "krill", 9, 0, "calf"),
    "bear": ("growls", "a cave", "berries", 8, 4, "cub"), "deer": (None, "the forest", "leaves", 6, 4, "fawn"),
    "eagle": ("screeches", "a high nest", "fish", 3, 2, "eaglet"), "otter": (None, "a riverbank", "fish", 3, 4, "pup"),
    "elephant": ("trumpets", "the grassland", "branches", 9, 4, "calf"), "snake": ("hisses", "the long grass", "eggs", 3, 0, "hatchling"),
    "spider": (None, "a web", "insects", 1, 8, "spiderling"), "penguin": (None, "the ice", "fish", 4, 2, "chick"),
    "camel": (None, "the desert", "dry plants", 8, 4, "calf"), "squirrel": (None, "an oak tree", "nuts", 2, 4, "kit"),
    "hedgehog": (None, "a hedge", "beetles", 2, 4, "hoglet"), "dolphin": ("clicks", "the sea", "fish", 6, 0, "calf"),
    "giraffe": (None, "the savanna", "acacia leaves", 8, 4, "calf"), "tortoise": (None, "a sandy burrow", "plants", 3, 4, "hatchling"),
}
GROUPS = {"cow": "herd", "sheep": "flock", "wolf": "pack", "bee": "swarm", "fish": "school", "lion": "pride",
          "crow": "murder", "goose": "gaggle", "whale": "pod", "ant": "colony", "owl": "parliament", "horse": "herd"}
COLORS = ["red", "blue", "green", "yellow", "orange", "purple", "white", "black", "brown", "grey", "pink", "gold",
          "silver", "violet", "crimson", "turquoise", "beige", "navy", "olive", "amber"]
THINGS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "banana": "yellow", "tomato": "red",
          "pumpkin": "orange", "plum": "purple", "cloud": "white", "leaf": "green", "sun": "yellow", "soil": "brown",
          "lemon": "yellow", "strawberry": "red", "chocolate": "brown", "milk": "white", "carrot": "orange",
          "lime": "green", "ink": "black", "sea": "blue", "blood": "red", "salt": "white", "emerald": "green",
          "ruby": "red", "sapphire": "blue", "crow": "black", "flamingo": "pink", "lavender": "purple"}
# country: (capital, continent, language)
COUNTRIES = {
    "France": ("Paris", "Europe", "French"), "Spain": ("Madrid", "Europe", "Spanish"), "Italy": ("Rome", "Europe", "Italian"),
    "Germany": ("Berlin", "Europe", "German"), "Japan": ("Tokyo", "Asia", "Japanese"), "Egypt": ("Cairo", "Africa", "Arabic"),
    "Canada": ("Ottawa", "North America", "English and French"), "Kenya": ("Nairobi", "Africa", "Swahili and English"),
    "Peru": ("Lima", "South America", "Spanish"), "Norway": ("Oslo", "Europe", "Norwegian"),
    "Greece": ("Athens", "Europe", "Greek"), "India": ("New Delhi", "Asia", "Hindi and English"),
    "Brazil": ("Brasilia", "South America", "Portuguese"), "Poland": ("Warsaw", "Europe", "Polish"),
    "Portugal": ("Lisbon", "Europe", "Portuguese"), "Mexico": ("Mexico City", "North America", "Spanish"),
    "Australia": ("Canberra", "Oceania", "English"), "China": ("Beijing", "Asia", "Chinese"),
    "Sweden": ("Stockholm", "Europe", "Swedish"), "Turkey": ("Ankara", "Asia and Europe", "Turkish"),
    "Argentina": ("Buenos Aires", "South America", "Spanish"), "Ireland": ("Dublin", "Europe", "Irish and English"),
    "Vietnam": ("Hanoi", "Asia", "Vietnamese"), "Morocco": ("Rabat", "Africa", "Arabic and Berber"),
    "Finland": ("Helsinki", "Europe", "Finnish and Swedish"), "Chile": ("Santiago", "South America", "Spanish"),
    "Austria": ("Vienna", "Europe", "German"), "Thailand": ("Bangkok", "Asia", "Thai"),
    "Nigeria": ("Abuja", "Africa", "English"), "Iceland": ("Reykjavik", "Europe", "Icelandic"),
}
CATEGORIES = {
    "fruit": ["apple", "pear", "banana", "cherry", "grape", "mango", "peach", "plum", "lemon", "orange", "melon",
              "apricot", "kiwi", "fig", "pineapple", "papaya", "raspberry", "blueberry"],
    "vegetable": ["carrot", "potato", "onion", "cabbage", "pepper", "spinach", "lettuce", "cucumber", "broccoli",
                  "cauliflower", "leek", "turnip", "radish", "celery", "garlic", "pea", "bean", "beetroot"],
    "tree": ["oak", "pine", "birch", "maple", "willow", "beech", "cedar", "elm", "ash", "spruce", "chestnut", "palm",
             "cypress", "poplar", "sycamore", "yew"],
    "flower": ["rose", "tulip", "daisy", "lily", "orchid", "sunflower", "poppy", "violet", "daffodil", "lavender",
               "iris", "marigold", "peony", "jasmine", "dandelion"],
    "musical instrument": ["piano", "violin", "guitar", "flute", "drum", "trumpet", "cello", "harp", "clarinet",
                           "saxophone", "trombone", "accordion", "banjo", "oboe", "ukulele"],
    "vehicle": ["car", "bus", "bicycle", "train", "truck", "tram", "boat", "ship", "plane", "helicopter", "scooter",
                "motorcycle", "canoe", "van", "tractor", "submarine"],
    "piece of furniture": ["chair", "table", "sofa", "bed", "desk", "wardrobe", "shelf", "stool", "bench", "cupboard",
                           "dresser", "armchair", "bookcase", "cabinet"],
    "piece of clothing": ["shirt", "coat", "scarf", "hat", "sock", "glove", "jacket", "skirt", "dress", "sweater",
                          "boot", "sandal", "trousers", "raincoat", "belt"],
    "sport": ["football", "tennis", "swimming", "running", "cycling", "rowing", "basketball", "volleyball", "hockey",
              "cricket", "baseball", "skiing", "climbing", "archery", "fencing", "badminton"],
    "planet": ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"],
    "metal": ["iron", "copper", "silver", "gold", "tin", "zinc", "lead", "aluminium", "nickel", "titanium"],
    "body part": ["hand", "foot", "knee", "elbow", "shoulder", "finger", "ankle", "wrist", "ear", "nose", "eye",
                  "mouth", "neck", "heart", "lung", "stomach"],
    "room": ["kitchen", "bedroom", "bathroom", "hallway", "attic", "cellar", "garage", "study", "pantry", "balcony"],
    "shape": ["circle", "square", "triangle", "rectangle", "oval", "hexagon", "pentagon", "star", "diamond", "cube",
              "sphere", "cylinder", "cone", "pyramid"],
    "bird": ["robin", "sparrow", "swallow", "pigeon", "parrot", "magpie", "heron", "swan", "gull", "wren", "falcon",
             "hawk", "stork", "pelican", "woodpecker"],
    "insect": ["ant", "beetle", "butterfly", "moth", "wasp", "ladybird", "grasshopper", "cricket", "dragonfly",
               "mosquito", "caterpillar", "firefly"],
}
PROFESSIONS = {"baker": "bakes bread", "teacher": "teaches children", "doctor": "helps sick people", "farmer": "grows food",
               "pilot": "flies planes", "carpenter": "builds things from wood", "gardener": "looks after plants",
               "chef": "cooks meals", "nurse": "cares for patients", "librarian": "looks after books",
               "plumber": "fixes pipes", "painter": "paints pictures", "mechanic": "repairs engines",
               "firefighter": "puts out fires", "fisherman": "catches fish", "tailor": "sews clothes",
               "programmer": "writes software", "architect": "designs buildings", "dentist": "looks after teeth",
               "postman": "delivers letters", "scientist": "runs experiments", "journalist": "writes the news",
               "musician": "plays music", "judge": "decides court cases", "engineer": "designs machines"}
TOOLS = {"hammer": "drive nails", "saw": "cut wood", "spoon": "stir soup", "brush": "paint walls", "key": "open doors",
         "pen": "write notes", "ladder": "reach high shelves", "needle": "sew cloth", "shovel": "dig holes",
         "map": "find the way", "scissors": "cut paper", "screwdriver": "turn screws", "wrench": "tighten bolts",
         "broom": "sweep the floor", "kettle": "boil water", "telescope": "look at the stars",
         "thermometer": "measure temperature", "compass": "find north", "ruler": "measure length",
         "umbrella": "stay dry in the rain", "rake": "gather leaves", "whisk": "beat eggs", "drill": "make holes",
         "magnifying glass": "see small things", "calculator": "do sums", "clock": "tell the time"}
OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "light": "dark", "up": "down",
             "open": "closed", "early": "late", "full": "empty", "old": "young", "tall": "short", "hard": "soft",
             "wet": "dry", "loud": "quiet", "rich": "poor", "strong": "weak", "clean": "dirty", "heavy": "light",
             "near": "far", "first": "last", "begin": "end", "push": "pull", "win": "lose", "buy": "sell",
             "thick": "thin", "sweet": "sour", "inside": "outside", "always": "never", "true": "false"}
PLURALS = {"child": "children", "mouse": "mice", "foot": "feet", "tooth": "teeth", "goose": "geese", "man": "men",
           "woman": "women", "box": "boxes", "bus": "buses", "leaf": "leaves", "knife": "knives", "city": "cities",
           "baby": "babies", "fox": "foxes", "sheep": "sheep", "fish": "fish", "person": "people", "wolf": "wolves",
           "potato": "potatoes", "church": "churches", "cactus": "cacti", "ox": "oxen", "dish": "dishes"}
PAST = {"walk": "walked", "run": "ran", "eat": "ate", "see": "saw", "go": "went", "write": "wrote", "read": "read",
        "swim": "swam", "sing": "sang", "build": "built", "buy": "bought", "think": "thought", "bring": "brought",
        "make": "made", "take": "took", "give": "gave", "find": "found", "speak": "spoke", "drink": "drank",
        "fly": "flew", "draw": "drew", "sleep": "slept", "teach": "taught", "catch": "caught", "jump": "jumped"}
ADJECTIVES = ["quiet", "brave", "clever", "gentle", "curious", "lazy", "busy", "cheerful", "grumpy", "tiny", "huge",
              "shy", "proud", "kind", "clumsy", "patient", "eager", "sleepy", "polite", "noisy", "careful", "honest",
              "friendly", "wise", "restless", "calm", "bold", "humble", "playful", "stubborn"]
WEATHER = ["sunny", "rainy", "windy", "cloudy", "foggy", "snowy", "warm", "cold", "stormy", "calm", "frosty", "humid"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
SEASONS = {"winter": "snow and short days", "spring": "blossom and new leaves", "summer": "long warm days",
           "autumn": "falling leaves and harvest"}
FOODS = ["bread", "soup", "rice", "pasta", "salad", "cake", "stew", "porridge", "pancakes", "curry", "omelette",
         "pie", "risotto", "dumplings", "noodles", "muffins", "lemonade", "biscuits"]
INGREDIENTS = ["flour", "eggs", "milk", "butter", "sugar", "salt", "oil", "onions", "garlic", "tomatoes", "cheese",
               "honey", "yeast", "rice", "lentils", "carrots", "pepper", "herbs", "lemon juice", "cream", "oats"]
COOKING_STEPS = ["wash the vegetables", "boil the water", "chop the onions", "stir the pot", "add a pinch of salt",
                 "heat the pan", "mix the flour and milk", "let it rest for ten minutes", "serve it warm",
                 "taste and season", "preheat the oven", "whisk the eggs", "melt the butter", "knead the dough",
                 "simmer gently", "grate the cheese", "slice the bread", "pour into a dish", "bake until golden"]
CODE_TERMS = {"a list": "holds items in order", "a loop": "repeats a block of code",
              "a function": "groups steps under a name", "a variable": "stores a value",
              "a test": "checks that code works", "a server": "answers requests", "a cache": "keeps recent results close",
              "a queue": "holds work in arrival order", "a model": "turns inputs into predictions",
              "an adapter": "changes a model with few new weights", "a dictionary": "maps keys to values",
              "a string": "holds text", "an integer": "is a whole number", "a compiler": "turns source code into programs",
              "a database": "stores data that lasts", "an index": "makes lookups fast", "a thread": "runs work alongside other work",
              "a tokenizer": "splits text into tokens", "a gradient": "says how to change the weights",
              "a class": "bundles data with behaviour", "an exception": "signals that something went wrong",
              "a log": "records what a program did", "a branch": "holds a line of changes in version control",
              "an API": "lets programs talk to each other", "a unit test": "checks one small piece of code"}
CODE_VERBS = ["load", "save", "parse", "count", "sort", "filter", "merge", "split", "find", "check", "build", "read",
              "write", "update", "remove", "format", "validate", "render", "fetch", "compute"]
CODE_NOUNS = ["user", "order", "file", "config", "item", "score", "name", "line", "word", "record", "price", "token",
              "batch", "report", "message", "event", "value", "row", "path", "label"]
PLACES = ["the market", "the park", "the library", "the river", "the station", "the garden", "the school",
          "the harbour", "the museum", "the bakery", "the beach", "the forest", "the hospital", "the stadium",
          "the bridge", "the castle", "the farm", "the village square", "the lighthouse", "the mountain"]
ACTIONS = ["walked to", "ran to", "cycled to", "drove to", "looked at", "painted", "cleaned", "visited", "sketched",
           "photographed", "wandered around", "hurried to"]
NAMES = ["Ada", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivo", "Jill", "Kai", "Lea", "Milo", "Nora",
         "Omar", "Pia", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Vik", "Wren", "Yara", "Zoë", "René", "Chloé", "Jürgen"]
SYLLABLES = ["bra", "ven", "dor", "mil", "tha", "ris", "ka", "lo", "mer", "wyn", "sel", "gar", "tor", "ani", "ell",
             "quin", "ost", "rav", "bel", "fen", "hal", "dun", "ira", "zo", "mar", "stel", "oak", "brook", "thorn", "vale"]
